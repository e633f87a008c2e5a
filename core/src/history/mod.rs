//! The history of earlier runs: per application signature (binary content
//! hash, arguments, rank count), the per-rank weights and state sizes of the
//! last few runs, so the first placement of the next run is already weighted.
//!
//! This module is the pure part (what is kept, how it is bounded, what the
//! next run starts from); [`file`] reads and writes it atomically.
//!
//! Bounds: at most `max_runs` runs per application and `max_apps`
//! applications; the least recently used application goes first. The file
//! size is bounded by `max_bytes` the same way.

pub mod file;

use crate::estimate::Estimate;
use serde::{Deserialize, Serialize};

pub use file::{HistoryError, load, save};

/// Identifies "the same application": same binary, same arguments, same rank count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppSignature(pub u128);

impl AppSignature {
    /// `binary_hash` is a content hash of the executable (e.g. xxh3-128).
    pub fn new(binary_hash: u128, args: &[String], ranks: u32) -> Self {
        let mut bytes = Vec::with_capacity(32 + args.iter().map(|a| a.len() + 8).sum::<usize>());
        bytes.extend_from_slice(&binary_hash.to_le_bytes());
        bytes.extend_from_slice(&ranks.to_le_bytes());
        for a in args {
            // Length-prefixed, so ["ab", "c"] and ["a", "bc"] differ.
            bytes.extend_from_slice(&(a.len() as u64).to_le_bytes());
            bytes.extend_from_slice(a.as_bytes());
        }
        AppSignature(twox_hash::XxHash3_128::oneshot(&bytes))
    }
}

/// One finished (or checkpointed) run: per rank, its weight and state size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Compute seconds per step, per rank.
    pub weights: Vec<f32>,
    pub state_bytes: Vec<u64>,
    /// Steps the run had in all (what a later run expects, unless told).
    pub steps: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AppHistory {
    signature: AppSignature,
    /// Oldest first.
    runs: Vec<RunRecord>,
    /// `History::clock` at the last use.
    last_used: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_runs: usize,
    pub max_apps: usize,
    /// Bound on the encoded size.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_runs: 4,
            max_apps: 256,
            max_bytes: 64 << 20,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    apps: Vec<AppHistory>,
    clock: u64,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    pub fn apps(&self) -> usize {
        self.apps.len()
    }

    pub fn runs(&self, sig: AppSignature) -> &[RunRecord] {
        self.apps
            .iter()
            .find(|a| a.signature == sig)
            .map_or(&[], |a| &a.runs)
    }

    /// Remembers a run, then trims to `limits`.
    pub fn record(&mut self, sig: AppSignature, run: RunRecord, limits: &HistoryLimits) {
        self.clock += 1;
        let clock = self.clock;
        match self.apps.iter_mut().find(|a| a.signature == sig) {
            Some(app) => {
                app.runs.push(run);
                app.last_used = clock;
            }
            None => self.apps.push(AppHistory {
                signature: sig,
                runs: vec![run],
                last_used: clock,
            }),
        }
        self.trim(limits);
    }

    /// Starting estimates for the next run of `sig` with `ranks` ranks: per
    /// rank, the mean weight over the remembered runs, with their spread and
    /// one sample's worth of confidence per run. `None` without history.
    pub fn initial_estimates(&mut self, sig: AppSignature, ranks: usize) -> Option<Vec<Estimate>> {
        self.clock += 1;
        let clock = self.clock;
        let app = self.apps.iter_mut().find(|a| a.signature == sig)?;
        app.last_used = clock;
        let runs: Vec<&RunRecord> = app
            .runs
            .iter()
            .filter(|r| r.weights.len() == ranks)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let n = runs.len() as f64;
        Some(
            (0..ranks)
                .map(|i| {
                    let mean = runs.iter().map(|r| f64::from(r.weights[i])).sum::<f64>() / n;
                    let var = runs
                        .iter()
                        .map(|r| (f64::from(r.weights[i]) - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    let rel = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };
                    Estimate::from_history(mean, rel, runs.len() as u32)
                })
                .collect(),
        )
    }

    /// Steps the most recent run of `sig` had.
    pub fn total_steps(&self, sig: AppSignature) -> Option<u64> {
        self.runs(sig).last().map(|r| r.steps).filter(|&s| s > 0)
    }

    /// The most recent state sizes of `sig`'s ranks.
    pub fn state_bytes(&self, sig: AppSignature) -> Option<&[u64]> {
        self.runs(sig).last().map(|r| &r.state_bytes[..])
    }

    fn trim(&mut self, limits: &HistoryLimits) {
        for app in &mut self.apps {
            let excess = app.runs.len().saturating_sub(limits.max_runs.max(1));
            app.runs.drain(..excess);
        }
        // Most recently used first, then cut the tail.
        self.apps.sort_by_key(|a| std::cmp::Reverse(a.last_used));
        self.apps.truncate(limits.max_apps.max(1));
        while self.apps.len() > 1 && self.encoded_len() > limits.max_bytes {
            self.apps.pop();
        }
        // A single application too large on its own loses its oldest runs.
        while self.encoded_len() > limits.max_bytes
            && self.apps.first().is_some_and(|a| a.runs.len() > 1)
        {
            self.apps[0].runs.remove(0);
        }
        if self.encoded_len() > limits.max_bytes {
            self.apps.clear();
        }
    }

    fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(w: f32, ranks: usize) -> RunRecord {
        RunRecord {
            weights: vec![w; ranks],
            state_bytes: vec![1000; ranks],
            steps: 100,
        }
    }

    #[test]
    fn signature_separates_binary_args_and_ranks() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let base = AppSignature::new(1, &args(&["ab", "c"]), 4);
        assert_eq!(base, AppSignature::new(1, &args(&["ab", "c"]), 4));
        assert_ne!(base, AppSignature::new(2, &args(&["ab", "c"]), 4));
        assert_ne!(base, AppSignature::new(1, &args(&["a", "bc"]), 4));
        assert_ne!(base, AppSignature::new(1, &args(&["ab", "c"]), 8));
    }

    #[test]
    fn next_run_starts_from_the_mean_of_earlier_runs() {
        let mut h = History::new();
        let sig = AppSignature(7);
        assert!(h.initial_estimates(sig, 3).is_none());
        let limits = HistoryLimits::default();
        h.record(
            sig,
            RunRecord {
                weights: vec![1.0, 2.0, 3.0],
                state_bytes: vec![1, 2, 3],
                steps: 100,
            },
            &limits,
        );
        h.record(
            sig,
            RunRecord {
                weights: vec![3.0, 2.0, 3.0],
                state_bytes: vec![4, 5, 6],
                steps: 100,
            },
            &limits,
        );
        let est = h.initial_estimates(sig, 3).unwrap();
        let w: Vec<f64> = est.iter().map(Estimate::weight).collect();
        assert_eq!(w, vec![2.0, 2.0, 3.0]);
        assert_eq!(est[0].samples(), 2);
        assert!(est[0].std_dev() > 0.0 && est[1].std_dev() == 0.0);
        assert_eq!(h.state_bytes(sig), Some(&[4, 5, 6][..]));
        assert!(h.initial_estimates(sig, 4).is_none(), "other rank count");
    }

    #[test]
    fn bounded_in_runs_apps_and_bytes() {
        let limits = HistoryLimits {
            max_runs: 2,
            max_apps: 3,
            max_bytes: 10_000,
        };
        let mut h = History::new();
        for app in 0..5u128 {
            for r in 0..4 {
                h.record(AppSignature(app), run(r as f32, 10), &limits);
            }
        }
        assert_eq!(h.apps(), 3);
        assert!(
            h.runs(AppSignature(0)).is_empty(),
            "least recently used went first"
        );
        assert_eq!(h.runs(AppSignature(4)).len(), 2);
        assert_eq!(
            h.runs(AppSignature(4))[0].weights[0],
            2.0,
            "oldest run went first"
        );
        h.record(AppSignature(9), run(1.0, 1000), &limits); // ~13 KB alone
        assert!(h.encoded_len() <= limits.max_bytes);
        let tight = HistoryLimits {
            max_bytes: 400,
            ..limits
        };
        h.record(AppSignature(10), run(1.0, 10), &tight);
        assert!(h.encoded_len() <= 400);
        assert_eq!(h.runs(AppSignature(10)).len(), 1);
    }
}
