//! The measured cost of a move: freeze time as a linear function of the bytes
//! carried, `fixed + bytes × per_byte`, fitted by least squares to real moves.
//! Until two moves of different sizes are seen, a prior is used.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoveCostModel {
    prior_fixed_s: f64,
    prior_s_per_byte: f64,
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl Default for MoveCostModel {
    /// About one second to relaunch (the `mpirun` floor measured here) and 1 GB/s.
    fn default() -> Self {
        MoveCostModel::with_prior(1.0, 1e-9)
    }
}

impl MoveCostModel {
    pub fn with_prior(fixed_s: f64, s_per_byte: f64) -> Self {
        MoveCostModel {
            prior_fixed_s: fixed_s,
            prior_s_per_byte: s_per_byte,
            n: 0.0,
            sx: 0.0,
            sy: 0.0,
            sxx: 0.0,
            sxy: 0.0,
        }
    }

    /// Records a real move: `bytes` carried, `freeze_s` seconds the job was suspended.
    pub fn observe(&mut self, bytes: u64, freeze_s: f64) {
        if !freeze_s.is_finite() || freeze_s < 0.0 {
            return;
        }
        let x = bytes as f64;
        self.n += 1.0;
        self.sx += x;
        self.sy += freeze_s;
        self.sxx += x * x;
        self.sxy += x * freeze_s;
    }

    /// `(fixed_s, s_per_byte)`: the fit if the observations determine it, else the prior.
    pub fn coefficients(&self) -> (f64, f64) {
        let det = self.n * self.sxx - self.sx * self.sx;
        if self.n >= 2.0 && det > 1e-9 * self.sxx.max(1.0) * self.n {
            let slope = (self.n * self.sxy - self.sx * self.sy) / det;
            let fixed = (self.sy - slope * self.sx) / self.n;
            if slope >= 0.0 && fixed >= 0.0 {
                return (fixed, slope);
            }
        }
        if self.n >= 1.0 {
            // One size seen: keep the prior's slope, shift the fixed part to match the mean.
            let fixed = (self.sy - self.prior_s_per_byte * self.sx) / self.n;
            return (fixed.max(0.0), self.prior_s_per_byte);
        }
        (self.prior_fixed_s, self.prior_s_per_byte)
    }

    /// Predicted freeze of one batch of moves: the relaunch (if `relaunch`) and the bytes.
    pub fn freeze_s(&self, bytes: u64, relaunch: bool) -> f64 {
        let (fixed, per_byte) = self.coefficients();
        let relaunch_s = if relaunch { fixed } else { 0.0 };
        relaunch_s + bytes as f64 * per_byte
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_linear_cost() {
        let mut m = MoveCostModel::default();
        for (bytes, s) in [(0u64, 0.5), (1 << 30, 0.5 + 2.0), (2 << 30, 0.5 + 4.0)] {
            m.observe(bytes, s);
        }
        let (fixed, per_byte) = m.coefficients();
        assert!((fixed - 0.5).abs() < 1e-6, "{fixed}");
        assert!((per_byte * (1u64 << 30) as f64 - 2.0).abs() < 1e-6);
        assert!((m.freeze_s(1 << 29, true) - 1.5).abs() < 1e-6);
        assert!((m.freeze_s(1 << 29, false) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn uses_the_prior_until_measured() {
        let m = MoveCostModel::with_prior(2.0, 0.0);
        assert_eq!(m.freeze_s(1 << 40, true), 2.0);
        let mut m = MoveCostModel::with_prior(2.0, 0.0);
        m.observe(100, 3.0);
        assert_eq!(m.coefficients(), (3.0, 0.0));
    }
}
