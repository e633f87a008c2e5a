//! A rank's load, window by window, for its node agent (under `pmrun`):
//! the steps since the previous report, their compute seconds and the sum
//! of their squares (so the coordinator gets a mean and a variance per
//! window, not a moving average it cannot combine), and the process's CPU
//! and block-I/O delay seconds over the same span.
//!
//! A window is reported at a decision point once `PM_LOAD_PERIOD` has
//! passed since it began (never per step); a report that could not go out
//! leaves the window open, so the next one covers both.

use crate::timing;
use std::time::{Duration, Instant};

/// The process's counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Counters {
    pub cpu: Duration,
    /// Zero where the kernel does not account it.
    pub io_wait: Duration,
}

impl Counters {
    /// Reads the process's counters now (`/proc/self/stat` for the delay).
    pub fn now() -> Self {
        Self {
            cpu: timing::process_cpu_time(),
            io_wait: timing::io_wait().unwrap_or_default(),
        }
    }
}

/// What one window measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Sums {
    pub steps: u64,
    pub compute_s: f64,
    pub compute_sq_s2: f64,
    pub cpu_s: f64,
    pub io_wait_s: f64,
}

/// The window since the previous report.
pub(crate) struct LoadWindow {
    started: Instant,
    at_start: Counters,
    sums: Sums,
}

impl LoadWindow {
    pub fn new(now: Instant, counters: Counters) -> Self {
        Self {
            started: now,
            at_start: counters,
            sums: Sums::default(),
        }
    }

    /// Adds one step's compute time (wall minus time blocked in MPI).
    pub fn record(&mut self, compute: Duration) {
        let x = compute.as_secs_f64();
        self.sums.steps += 1;
        self.sums.compute_s += x;
        self.sums.compute_sq_s2 += x * x;
    }

    /// Whether the window is to be reported: `period` has passed and it
    /// holds a step.
    pub fn due(&self, now: Instant, period: Duration) -> bool {
        self.sums.steps > 0 && now.saturating_duration_since(self.started) >= period
    }

    /// The window's sums, its CPU and I/O delay up to `counters`.
    pub fn sums(&self, counters: Counters) -> Sums {
        Sums {
            cpu_s: counters.cpu.saturating_sub(self.at_start.cpu).as_secs_f64(),
            io_wait_s: counters
                .io_wait
                .saturating_sub(self.at_start.io_wait)
                .as_secs_f64(),
            ..self.sums
        }
    }

    /// The window was reported: the next one begins.
    pub fn reset(&mut self, now: Instant, counters: Counters) {
        *self = Self::new(now, counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(cpu_ms: u64, io_ms: u64) -> Counters {
        Counters {
            cpu: Duration::from_millis(cpu_ms),
            io_wait: Duration::from_millis(io_ms),
        }
    }

    #[test]
    fn a_window_sums_its_steps_and_squares_and_resets() {
        let t0 = Instant::now();
        let period = Duration::from_secs(1);
        let mut w = LoadWindow::new(t0, counters(100, 5));
        assert!(!w.due(t0 + period, period), "no step yet");
        w.record(Duration::from_millis(100));
        w.record(Duration::from_millis(300));
        assert!(!w.due(t0 + Duration::from_millis(999), period));
        assert!(w.due(t0 + period, period));
        let s = w.sums(counters(600, 25));
        assert_eq!(s.steps, 2);
        assert!((s.compute_s - 0.4).abs() < 1e-12, "{s:?}");
        assert!((s.compute_sq_s2 - (0.01 + 0.09)).abs() < 1e-12, "{s:?}");
        assert!((s.cpu_s - 0.5).abs() < 1e-12 && (s.io_wait_s - 0.02).abs() < 1e-12);
        // Not reported: the window stays open and keeps adding up.
        w.record(Duration::from_millis(200));
        assert_eq!(w.sums(counters(700, 25)).steps, 3);
        // Reported: the next window starts from nothing, at these counters.
        let t1 = t0 + Duration::from_secs(2);
        w.reset(t1, counters(700, 25));
        assert_eq!(w.sums(counters(700, 25)), Sums::default());
        assert!(!w.due(t1 + period, period));
        w.record(Duration::from_millis(50));
        let s = w.sums(counters(750, 20));
        assert_eq!(s.steps, 1);
        assert!((s.cpu_s - 0.05).abs() < 1e-12);
        assert_eq!(s.io_wait_s, 0.0, "a counter that went back counts as none");
        assert!(w.due(t1 + period, period));
    }

    #[test]
    fn the_process_counters_are_read() {
        let c = Counters::now();
        assert!(c.cpu > Duration::ZERO);
    }
}
