//! Per-rank runtime estimates: an exponentially weighted mean and variance of
//! the compute time per step, a confidence that grows with the samples, and
//! phase-change detection.
//!
//! Pure: the caller feeds one measured sample per step (compute time excluding
//! time blocked in MPI) and reads the estimate back.
//!
//! Rules, in plain words:
//! * A sample is an *outlier* when it is further from the mean than both
//!   `outlier_sigmas` standard deviations and `min_jump` of the mean. Outliers
//!   are held back; when a normal sample follows, they are folded in with the
//!   small weight `outlier_alpha`, so a noise spike barely moves the estimate.
//! * `phase_samples` outliers in a row on the same side are a *phase change*:
//!   the estimate restarts from the mean of those samples. With the default of
//!   2, the estimate follows a step change of more than `min_jump` within
//!   [`STEP_FOLLOW_SAMPLES`] samples.
//! * The confidence is `n / (n + half_confidence_samples)` scaled down by the
//!   coefficient of variation: few samples or a noisy rank give a low value.

use serde::{Deserialize, Serialize};

/// A step change larger than `min_jump` is followed (the estimate lands within
/// 10% of the new level) after at most this many samples with the default
/// configuration. Stated here, checked by the tests.
pub const STEP_FOLLOW_SAMPLES: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EstimatorConfig {
    /// Weight of a new normal sample in the moving averages (0..1).
    pub alpha: f64,
    /// Weight of a lone outlier (smaller than `alpha`: noise is not chased).
    pub outlier_alpha: f64,
    /// Distance from the mean, in standard deviations, beyond which a sample is an outlier.
    pub outlier_sigmas: f64,
    /// Relative distance from the mean below which a sample is never an outlier.
    pub min_jump: f64,
    /// Consecutive same-side outliers that make a phase change.
    pub phase_samples: u32,
    /// Samples at which the confidence reaches one half (for a noise-free rank).
    pub half_confidence_samples: u32,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        EstimatorConfig {
            alpha: 0.2,
            outlier_alpha: 0.05,
            outlier_sigmas: 4.0,
            min_jump: 0.25,
            phase_samples: STEP_FOLLOW_SAMPLES,
            half_confidence_samples: 5,
        }
    }
}

/// What one sample did to the estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The sample was ignored (negative, NaN or infinite).
    Rejected,
    Normal,
    /// Far from the mean; held back until the next samples tell noise from a new phase.
    Outlier,
    /// The last `phase_samples` samples were outliers on one side: the estimate restarted.
    PhaseChange,
}

/// The running estimate of one rank's compute time per step (seconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    mean: f64,
    var: f64,
    samples: u32,
    /// Consecutive outliers on one side: their count, sum and side (+1 above, -1 below).
    pending: u32,
    pending_sum: f64,
    pending_side: i8,
}

impl Estimate {
    /// An estimate with no samples (weight 0, confidence 0).
    pub fn new() -> Self {
        Estimate::default()
    }

    /// Starts from a remembered weight (from the history of earlier runs),
    /// counted as `samples` samples with the given relative spread.
    pub fn from_history(weight: f64, rel_std_dev: f64, samples: u32) -> Self {
        let weight = if weight.is_finite() && weight >= 0.0 {
            weight
        } else {
            0.0
        };
        let sd = (weight * rel_std_dev.abs()).min(f64::MAX.sqrt());
        Estimate {
            mean: weight,
            var: if sd.is_finite() { sd * sd } else { 0.0 },
            samples,
            ..Estimate::default()
        }
    }

    pub fn weight(&self) -> f64 {
        self.mean
    }

    pub fn std_dev(&self) -> f64 {
        self.var.sqrt()
    }

    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// In [0, 1): grows with samples, shrinks with relative noise.
    pub fn confidence(&self, cfg: &EstimatorConfig) -> f64 {
        let n = f64::from(self.samples);
        let by_count = n / (n + f64::from(cfg.half_confidence_samples.max(1)));
        let cv = if self.mean > 0.0 {
            self.std_dev() / self.mean
        } else {
            0.0
        };
        by_count / (1.0 + cv)
    }

    /// Feeds one measured compute time per step.
    pub fn observe(&mut self, x: f64, cfg: &EstimatorConfig) -> Observation {
        if !x.is_finite() || x < 0.0 {
            return Observation::Rejected;
        }
        if self.samples == 0 {
            self.mean = x;
            self.var = 0.0;
            self.samples = 1;
            return Observation::Normal;
        }
        let d = x - self.mean;
        let threshold = (cfg.outlier_sigmas * self.std_dev()).max(cfg.min_jump * self.mean);
        if d.abs() <= threshold {
            if self.pending > 0 {
                // The outliers were noise after all: let them count a little.
                self.fold(
                    self.pending_sum / f64::from(self.pending),
                    cfg.outlier_alpha,
                );
                self.pending = 0;
            }
            self.fold(x, cfg.alpha);
            return Observation::Normal;
        }
        let side = if d > 0.0 { 1 } else { -1 };
        if self.pending > 0 && self.pending_side == side {
            self.pending += 1;
            self.pending_sum += x;
        } else {
            self.pending = 1;
            self.pending_sum = x;
            self.pending_side = side;
        }
        if self.pending >= cfg.phase_samples.max(1) {
            // A new phase: forget the old level entirely.
            self.mean = self.pending_sum / f64::from(self.pending);
            self.var = 0.0;
            self.samples = self.pending;
            self.pending = 0;
            return Observation::PhaseChange;
        }
        Observation::Outlier
    }

    /// Incremental exponentially weighted mean and variance (Finch 2009).
    fn fold(&mut self, x: f64, alpha: f64) {
        let d = x - self.mean;
        let incr = alpha * d;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + d * incr);
        self.samples = self.samples.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn noisy(rng: &mut SmallRng, level: f64, rel: f64) -> f64 {
        level * (1.0 + rel * (rng.random::<f64>() * 2.0 - 1.0))
    }

    #[test]
    fn converges_on_a_steady_level_and_gains_confidence() {
        let cfg = EstimatorConfig::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut e = Estimate::new();
        let mut last_conf = 0.0;
        for i in 0..200 {
            e.observe(noisy(&mut rng, 2.0, 0.1), &cfg);
            if i == 5 {
                last_conf = e.confidence(&cfg);
            }
        }
        assert!((e.weight() - 2.0).abs() < 0.1, "{}", e.weight());
        assert!(e.confidence(&cfg) > last_conf);
        assert!(e.confidence(&cfg) > 0.8);
    }

    #[test]
    fn follows_a_step_change_within_the_stated_samples() {
        let cfg = EstimatorConfig::default();
        let mut rng = SmallRng::seed_from_u64(2);
        for (from, to) in [(1.0, 3.0), (3.0, 1.0), (1.0, 1.5)] {
            let mut e = Estimate::new();
            for _ in 0..50 {
                e.observe(noisy(&mut rng, from, 0.05), &cfg);
            }
            for _ in 0..STEP_FOLLOW_SAMPLES {
                e.observe(noisy(&mut rng, to, 0.05), &cfg);
            }
            assert!(
                (e.weight() - to).abs() <= 0.1 * to,
                "{from} -> {to}: estimate {} after {STEP_FOLLOW_SAMPLES} samples",
                e.weight()
            );
        }
    }

    #[test]
    fn a_lone_spike_barely_moves_the_estimate() {
        let cfg = EstimatorConfig::default();
        let mut e = Estimate::new();
        for _ in 0..30 {
            e.observe(1.0, &cfg);
        }
        assert_eq!(e.observe(10.0, &cfg), Observation::Outlier);
        assert_eq!(e.observe(1.0, &cfg), Observation::Normal);
        assert!(e.weight() < 1.5, "{}", e.weight());
        // Alternating spikes never form a phase.
        for i in 0..40 {
            let x = if i % 2 == 0 { 10.0 } else { 1.0 };
            assert_ne!(e.observe(x, &cfg), Observation::PhaseChange);
        }
    }

    #[test]
    fn rejects_bad_samples() {
        let cfg = EstimatorConfig::default();
        let mut e = Estimate::from_history(1.0, 0.1, 10);
        for x in [f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(e.observe(x, &cfg), Observation::Rejected);
        }
        assert_eq!(e.weight(), 1.0);
        assert_eq!(e.samples(), 10);
    }
}
