//! A node's compute capacity: its hardware from the hwloc topology
//! (`hwlocality`), and a pure [`Capacity`] the balancer uses.
//!
//! The capacity in the balancer's unit (core-seconds per second) is the
//! number of cores times the availability measured on the node: the share of
//! those cores the job actually gets (external load, a CPU quota). Cores, not
//! hardware threads: two ranks on the two PUs of one core do not run twice as
//! fast as one.

use hwlocality::Topology;
use hwlocality::object::types::ObjectType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub sockets: u32,
    pub numa_nodes: u32,
    pub cores: u32,
    /// Hardware threads.
    pub pus: u32,
    /// Share of the cores available to the job, 0..=1.
    pub availability: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("hwloc could not read this machine's topology: {0}")]
    Hwloc(String),
    #[error("hwloc reports no cores on this machine")]
    NoCores,
}

impl Capacity {
    /// This machine, fully available.
    pub fn detect() -> Result<Capacity, TopologyError> {
        let topo = Topology::new().map_err(|e| TopologyError::Hwloc(e.to_string()))?;
        let count = |ty| topo.objects_with_type(ty).count() as u32;
        let (cores, pus) = (count(ObjectType::Core), count(ObjectType::PU));
        if cores == 0 && pus == 0 {
            return Err(TopologyError::NoCores);
        }
        Ok(Capacity {
            // Some virtual machines report no package or NUMA object: count one.
            sockets: count(ObjectType::Package).max(1),
            numa_nodes: count(ObjectType::NUMANode).max(1),
            // A topology without core objects has one core per PU.
            cores: if cores == 0 { pus } else { cores },
            pus: pus.max(cores),
            availability: 1.0,
        })
    }

    /// The balancer's capacity: cores × availability.
    pub fn effective(&self) -> f64 {
        f64::from(self.cores) * self.availability.clamp(0.0, 1.0)
    }

    /// Availability under a CFS quota (`cpu.cfs_quota_us` over `cpu.cfs_period_us`);
    /// a negative quota means none.
    pub fn with_cpu_quota(self, quota_us: i64, period_us: u64) -> Capacity {
        if quota_us < 0 || period_us == 0 || self.cores == 0 {
            return self;
        }
        let cores_allowed = quota_us as f64 / period_us as f64;
        Capacity {
            availability: self.availability.min(cores_allowed / f64::from(self.cores)),
            ..self
        }
    }

    /// Availability when other work keeps `busy_cores` cores busy on average.
    pub fn with_external_load(self, busy_cores: f64) -> Capacity {
        if !busy_cores.is_finite() || self.cores == 0 {
            return self;
        }
        let free = (f64::from(self.cores) - busy_cores.max(0.0)) / f64::from(self.cores);
        Capacity {
            availability: self.availability.min(free.max(0.0)),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_a_plausible_topology() {
        let cap = Capacity::detect().unwrap();
        println!(
            "this machine: {cap:?}, effective capacity {}",
            cap.effective()
        );
        assert!(cap.sockets >= 1 && cap.numa_nodes >= 1 && cap.cores >= 1);
        assert!(cap.pus >= cap.cores);
        // The threads the OS lets us use are hardware threads of this machine
        // (a cpuset may allow fewer, never more).
        let usable = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(
            usable <= cap.pus,
            "{usable} usable threads but hwloc sees {} PUs",
            cap.pus
        );
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let procs = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count() as u32;
        // hwloc leaves out PUs outside our cpuset; /proc/cpuinfo lists them all.
        assert!(
            cap.pus <= procs,
            "hwloc sees {} PUs, /proc/cpuinfo {procs}",
            cap.pus
        );
        assert_eq!(cap.effective(), f64::from(cap.cores));
    }

    #[test]
    fn quota_and_external_load_lower_the_availability() {
        let cap = Capacity {
            sockets: 1,
            numa_nodes: 1,
            cores: 4,
            pus: 8,
            availability: 1.0,
        };
        assert_eq!(cap.with_cpu_quota(200_000, 100_000).effective(), 2.0);
        assert_eq!(cap.with_cpu_quota(-1, 100_000).effective(), 4.0);
        assert_eq!(cap.with_cpu_quota(800_000, 100_000).effective(), 4.0);
        assert_eq!(cap.with_external_load(1.0).effective(), 3.0);
        assert_eq!(cap.with_external_load(9.0).effective(), 0.0);
        assert_eq!(
            cap.with_cpu_quota(300_000, 100_000)
                .with_external_load(2.0)
                .effective(),
            2.0
        );
    }
}
