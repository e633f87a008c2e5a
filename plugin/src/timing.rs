//! Per-step timing: wall time, and compute time = wall time minus the time
//! blocked in MPI (see `pmpi`). Under `pmrun` the steps' compute times and
//! the process's counters also go to the node agent, window by window
//! (`load`).

use crate::pmpi;
use std::time::{Duration, Instant};

/// Weight of the newest sample in the moving averages.
const ALPHA: f64 = 0.125;

/// A compact per-rank summary of the steps so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Steps measured (since this process started).
    pub steps: u64,
    pub last_wall: Duration,
    pub last_compute: Duration,
    /// Exponentially weighted mean of compute seconds per step.
    pub compute_mean: f64,
    /// Exponentially weighted variance of compute seconds per step.
    pub compute_var: f64,
    /// Exponentially weighted mean of wall seconds per step.
    pub wall_mean: f64,
    /// Total time blocked in MPI.
    pub mpi_time: Duration,
    /// CPU time of the process (user + system).
    pub cpu_time: Duration,
    /// Time the process waited for block I/O, where the kernel accounts it.
    pub io_wait: Option<Duration>,
}

/// Measures the application's part of each step, excluding the runtime's own work.
pub(crate) struct StepTimer {
    started: Instant,
    mpi_at_start: Duration,
    stats: StepStats,
}

impl StepTimer {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            mpi_at_start: pmpi::mpi_time(),
            stats: StepStats::default(),
        }
    }

    /// Closes the application's part of a step; returns its wall time.
    pub fn end_step(&mut self) -> Duration {
        let wall = self.started.elapsed();
        let mpi_now = pmpi::mpi_time();
        let compute = wall.saturating_sub(mpi_now.saturating_sub(self.mpi_at_start));
        let s = &mut self.stats;
        let x = compute.as_secs_f64();
        if s.steps == 0 {
            s.compute_mean = x;
            s.wall_mean = wall.as_secs_f64();
        } else {
            let diff = x - s.compute_mean;
            let incr = ALPHA * diff;
            s.compute_mean += incr;
            s.compute_var = (1.0 - ALPHA) * (s.compute_var + diff * incr);
            s.wall_mean += ALPHA * (wall.as_secs_f64() - s.wall_mean);
        }
        s.steps += 1;
        s.last_wall = wall;
        s.last_compute = compute;
        s.mpi_time = mpi_now;
        wall
    }

    /// Opens the application's part of the next step (after the runtime's work).
    pub fn start_step(&mut self) {
        self.started = Instant::now();
        self.mpi_at_start = pmpi::mpi_time();
    }

    /// Compute time of the step [`StepTimer::end_step`] closed last.
    pub fn last_compute(&self) -> Duration {
        self.stats.last_compute
    }

    /// Moving mean of wall seconds per step.
    pub fn wall_mean(&self) -> f64 {
        self.stats.wall_mean
    }

    /// The summary, with CPU time and I/O wait read now.
    pub fn stats(&self) -> StepStats {
        StepStats {
            cpu_time: process_cpu_time(),
            io_wait: io_wait(),
            ..self.stats
        }
    }
}

/// CPU time (user + system) of the whole process so far.
pub(crate) fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Aggregated block-I/O delay (field 42 of /proc/self/stat), in clock ticks.
pub(crate) fn io_wait() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest.split_whitespace().nth(39)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_time_is_wall_time_outside_mpi() {
        let mut t = StepTimer::new();
        std::thread::sleep(Duration::from_millis(20));
        let wall = t.end_step();
        let s = t.stats();
        assert!(wall >= Duration::from_millis(20));
        assert_eq!(s.last_compute, wall, "no MPI call was made");
        assert_eq!(s.steps, 1);
        assert!(s.cpu_time > Duration::ZERO);
        assert!(s.io_wait.is_some(), "/proc/self/stat has the delay field");
    }

    #[test]
    fn moving_average_follows_a_change() {
        let mut t = StepTimer::new();
        for _ in 0..40 {
            t.start_step();
            t.end_step();
        }
        let fast = t.stats().compute_mean;
        for _ in 0..30 {
            t.start_step();
            std::thread::sleep(Duration::from_millis(2));
            t.end_step();
        }
        let slow = t.stats().compute_mean;
        assert!(fast < 0.001 && slow > 0.0015, "fast {fast} slow {slow}");
        assert!(t.stats().compute_var >= 0.0);
    }
}
