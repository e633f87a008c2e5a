//! The history of earlier runs at the edges of a job: recalled before it
//! starts (each rank's weight, the steps a run had), recorded once it
//! finished. A history that cannot be read is reported and ignored, never
//! fatal: it only costs the job an informed first placement.

use pm_core::estimate::Estimate;
use pm_core::history::{self, AppSignature, HistoryLimits, RunRecord};
use std::path::Path;

/// What the history says about this application.
#[derive(Debug, Default)]
pub struct Recalled {
    pub estimates: Option<Vec<Estimate>>,
    pub steps: Option<u64>,
}

/// The application's signature: its executable's bytes, its arguments and
/// the rank count (another input or size is another application).
pub fn signature(app: &[String], ranks: u32) -> std::io::Result<AppSignature> {
    let bytes = std::fs::read(&app[0])?;
    let hash = twox_hash::XxHash3_128::oneshot(&bytes);
    Ok(AppSignature::new(hash, &app[1..], ranks))
}

/// What `path` remembers of `sig`; a damaged or unreadable file is said
/// once (through `warn`) and treated as empty.
pub fn recall(path: &Path, sig: AppSignature, ranks: u32, warn: impl Fn(String)) -> Recalled {
    match history::file::load(path) {
        Ok(mut h) => Recalled {
            estimates: h.initial_estimates(sig, ranks as usize),
            steps: h.total_steps(sig),
        },
        Err(e) => {
            warn(format!("{e}; the history is ignored for this run"));
            Recalled::default()
        }
    }
}

/// Adds a finished run to the history at `path` (created if need be).
pub fn record(path: &Path, sig: AppSignature, run: RunRecord) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // A damaged file is replaced by a fresh history.
    let mut h = history::file::load(path).unwrap_or_default();
    h.record(sig, run, &HistoryLimits::default());
    history::file::save(path, &h).map_err(|e| e.to_string())
}
