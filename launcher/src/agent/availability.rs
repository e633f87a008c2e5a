//! What the node's CPUs leave its ranks, measured for a node without a
//! cgroup quota: once a heartbeat period the core names the ranks'
//! processes ([`Action::MeasureAvailability`]); this worker reads
//! `/proc/stat` and each rank's `/proc/<pid>/stat`, and reports (as
//! [`Event::Availability`]) 1 − (steal + CPU used by processes other than
//! the ranks) over all of the machine's CPU time since the previous
//! measurement. The core clamps it and keeps it.
//!
//! [`Action::MeasureAvailability`]: super::core::Action::MeasureAvailability
//! [`Event::Availability`]: super::core::Event::Availability

use super::core::Event;
use super::event_loop::Input;
use std::collections::HashMap;
use std::sync::mpsc::{Sender, channel};

/// The machine's CPU time so far, in clock ticks, summed over its CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTimes {
    /// user + nice + system + irq + softirq (guest time is inside user).
    busy: u64,
    /// Taken by the hypervisor for other guests.
    steal: u64,
    /// Everything: busy + idle + iowait + steal.
    total: u64,
}

/// One measurement: the machine's times and each rank's CPU ticks.
#[derive(Debug, Default)]
struct Sample {
    cpu: CpuTimes,
    ranks: HashMap<u32, u64>,
}

pub(super) fn start(tx: Sender<Input>) -> std::io::Result<Sender<Vec<u32>>> {
    let (jobs, rx) = channel::<Vec<u32>>();
    super::spawn("pmd-availability", move || {
        let mut last: Option<Sample> = None;
        for pids in rx {
            let Some(now) = sample(&pids) else {
                tracing::warn!("cannot read /proc/stat: the node's availability stays as it was");
                continue;
            };
            if let Some(value) = last.as_ref().and_then(|prev| availability(prev, &now)) {
                if tx.send(Event::Availability { value }.into()).is_err() {
                    return;
                }
            }
            last = Some(now);
        }
    })?;
    Ok(jobs)
}

fn sample(pids: &[u32]) -> Option<Sample> {
    let cpu = cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // A rank that ended meanwhile is simply left out.
    let ranks = pids
        .iter()
        .filter_map(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, process_ticks(&stat)?))
        })
        .collect();
    Some(Sample { cpu, ranks })
}

/// The aggregate `cpu` line of `/proc/stat`.
fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    let steal = field(7);
    (f.len() >= 4).then_some(CpuTimes {
        busy,
        steal,
        total: busy + field(3) + field(4) + steal,
    })
}

/// utime + stime of a process (fields 14 and 15 of `/proc/<pid>/stat`,
/// all its threads), in clock ticks.
fn process_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name, which is parenthesised and may hold spaces.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(utime + stime)
}

/// 1 − (steal + others' CPU) / all CPU time between two samples; `None`
/// when no time passed. Ranks present in only one sample count nothing.
fn availability(prev: &Sample, now: &Sample) -> Option<f64> {
    let total = now.cpu.total.checked_sub(prev.cpu.total)?;
    if total == 0 {
        return None;
    }
    let busy = now.cpu.busy.saturating_sub(prev.cpu.busy);
    let steal = now.cpu.steal.saturating_sub(prev.cpu.steal);
    let ranks: u64 = now
        .ranks
        .iter()
        .filter_map(|(pid, t)| Some(t.saturating_sub(*prev.ranks.get(pid)?)))
        .sum();
    let others = busy.saturating_sub(ranks);
    Some(1.0 - (steal + others) as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str =
        "cpu  100 10 50 800 20 5 15 0 30 0\ncpu0 50 5 25 400 10 2 8 0 15 0\nintr 1 2 3\n";

    #[test]
    fn the_machines_times_come_from_the_cpu_line() {
        let t = cpu_times(STAT).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 180,
                steal: 0,
                total: 1000
            }
        );
        assert!(cpu_times("intr 1 2\n").is_none());
        assert!(cpu_times("cpu  1 x 3 4\n").is_none());
    }

    #[test]
    fn a_process_ticks_are_its_user_and_system_time() {
        // pid (comm with spaces) state ppid … utime=14 stime=15 …
        let stat = "42 (a b) R 1 42 42 0 -1 4194304 100 0 0 0 250 40 0 0 20 0 3 0 5 0 0";
        assert_eq!(process_ticks(stat), Some(290));
        assert_eq!(process_ticks("42 (x) R 1"), None);
    }

    #[test]
    fn availability_is_what_steal_and_other_processes_leave() {
        let sample = |busy, steal, total, ranks: &[(u32, u64)]| Sample {
            cpu: CpuTimes { busy, steal, total },
            ranks: ranks.iter().copied().collect(),
        };
        let prev = sample(1000, 100, 10_000, &[(7, 500), (8, 500)]);
        // 1000 ticks passed: 600 busy, of which the ranks 400; 100 stolen.
        let now = sample(1600, 200, 11_000, &[(7, 700), (8, 700), (9, 50)]);
        let a = availability(&prev, &now).unwrap();
        assert!((a - (1.0 - (100.0 + 200.0) / 1000.0)).abs() < 1e-12, "{a}");
        // Only the ranks ran: all of it is theirs.
        let idle = sample(1400, 100, 11_000, &[(7, 700), (8, 700)]);
        assert_eq!(availability(&prev, &idle), Some(1.0));
        assert_eq!(availability(&prev, &prev), None, "no time passed");
    }
}
