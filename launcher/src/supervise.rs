//! Runs the job and, when it fails after committing a checkpoint, runs it
//! again so that it resumes from that checkpoint, up to a number of times.

use crate::backend::{LaunchBackend, LaunchPlan};
use pm_core::store::commit::read_record;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Instant;

pub struct Supervisor<'a> {
    pub backend: &'a dyn LaunchBackend,
    pub plan: LaunchPlan,
    /// The job's commit record, where rank 0 runs on this machine.
    pub job_record: PathBuf,
    pub max_restarts: u32,
}

/// The exit code a shell would report for `status`.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Supervisor<'_> {
    /// Runs the job to its end; returns the application's exit code.
    pub fn run(&self) -> anyhow::Result<i32> {
        let mut restarts = 0;
        loop {
            let started = Instant::now();
            let mut child = self.backend.command(&self.plan).spawn().map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {}: {e} (is it installed and on PATH?)",
                    self.backend.name()
                )
            })?;
            let status = child.wait()?;
            if status.success() {
                return Ok(0);
            }
            let code = exit_code(status);
            let record = read_record(&self.job_record).ok().flatten();
            let Some(record) = record else {
                eprintln!(
                    "pmrun: the job failed (exit code {code}) before committing any checkpoint"
                );
                return Ok(code);
            };
            if restarts == self.max_restarts {
                eprintln!(
                    "pmrun: the job failed (exit code {code}) {} times; its checkpoint of step {} is kept: \
                     run pmrun again with --job {} to resume",
                    restarts + 1,
                    record.step,
                    self.plan
                        .env
                        .iter()
                        .find(|(k, _)| k == "PM_JOB")
                        .map_or("", |(_, v)| v.as_str())
                );
                return Ok(code);
            }
            restarts += 1;
            eprintln!(
                "pmrun: the job failed after {:.1} s (exit code {code}); relaunching from its committed \
                 checkpoint (epoch {}, step {}), restart {restarts} of {}",
                started.elapsed().as_secs_f64(),
                record.epoch,
                record.step,
                self.max_restarts
            );
        }
    }
}
