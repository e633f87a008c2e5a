//! Flush without Slurm: a directory stands for the shared file system.
//! Every agent and rank of a job on virtual nodes is SIGKILLed and every
//! node store is lost; `pmrun --job ID --flush DIR` resumes from the
//! flushed copy bit-exact. A stop flushes its own epoch before pmrun ends;
//! a damaged flushed chunk is detected, and the copy is kept.

use pm_core::store::flush::read_job_record;
use pm_tests::bounded::poll_until;
use pm_tests::job::{Job, files_under, heat_args, reference};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The jobs share two cores; one at a time keeps their timing sane.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const STOPPED_EXIT: i32 = 75;

fn start(id: &str, flush: &Path, extra: &[&str]) -> Job {
    let mut args = vec!["-n", "4", "--local-nodes", "4", "--every", "20"];
    args.extend(["--flush", flush.to_str().unwrap()]);
    args.extend_from_slice(extra);
    Job::start(id, &args, &heat_args(20), &[])
}

/// Waits until the flush directory records an epoch of `id` of at least `epoch`.
fn wait_for_flushed(job: &Job, flush: &Path, epoch: u64) -> u64 {
    poll_until(
        Duration::from_secs(60),
        || {
            let r = read_job_record(flush, &job.id).unwrap()?;
            (r.epoch >= epoch).then_some(r.epoch)
        },
        || format!("no epoch {epoch} was flushed:\n{}", job.output()),
    )
}

#[test]
fn a_job_that_lost_every_node_store_resumes_from_the_flushed_copy_bit_exact() {
    let _serial = serial();
    let reference = reference(4);
    let flush = tempfile::tempdir().unwrap();
    let job = start("flush-all", flush.path(), &[]);
    let flushed = wait_for_flushed(&job, flush.path(), 2);
    let status = job.status().expect("ctl status");
    assert_eq!(status["flush_dir"], flush.path().to_str().unwrap());
    assert!(
        status["flushed"]["epoch"].as_u64() >= Some(flushed),
        "{status}"
    );
    let (_, text) = job.ctl(&["status"]);
    assert!(text.contains("flushed to "), "{text}");
    // Every process of the job SIGKILLed, and its store with every
    // virtual node's directory removed.
    drop(job);

    let job = start("flush-all", flush.path(), &[]);
    let (ended, store) = job.finish();
    let out = &ended.output;
    assert!(ended.status.success(), "{out}");
    assert!(
        out.contains("resuming job flush-all from the flushed copy"),
        "{out}"
    );
    let resumed: u64 = out
        .split("resuming job flush-all from the flushed copy")
        .nth(1)
        .and_then(|rest| rest.split("(epoch ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in:\n{out}"));
    assert!(resumed >= flushed, "resumed {resumed}, flushed {flushed}");
    assert_eq!(
        pm_tests::mpi::checksum(out).as_deref(),
        Some(reference.as_str()),
        "{out}"
    );
    assert!(files_under(store.path()).is_empty());
    assert!(
        files_under(flush.path()).is_empty(),
        "a finished job leaves no flushed copy: {:?}",
        files_under(flush.path())
    );
}

#[test]
fn a_stop_flushes_its_epoch_and_a_damaged_flushed_chunk_is_detected() {
    let _serial = serial();
    let flush = tempfile::tempdir().unwrap();
    // No scheduled flush: only the stop's.
    let job = start("flush-stop", flush.path(), &["--flush-every", "1000"]);
    job.wait_for_commit(2);
    assert_eq!(read_job_record(flush.path(), "flush-stop").unwrap(), None);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(job.pmrun_pid() as i32, libc::SIGUSR1) };
    let (ended, _store) = job.finish();
    let out = &ended.output;
    assert_eq!(ended.status.code(), Some(STOPPED_EXIT), "{out}");
    let record = read_job_record(flush.path(), "flush-stop")
        .unwrap()
        .unwrap_or_else(|| panic!("the stop was not flushed:\n{out}"));
    assert!(
        out.contains(&format!(
            "epoch {} (step {}) flushed to",
            record.epoch, record.step
        )),
        "{out}"
    );
    assert!(
        out.contains("pmrun --job flush-stop --flush"),
        "how to resume: {out}"
    );

    // One byte of rank 1's flushed snapshot flipped: the resume names the
    // rank and the chunk, and keeps the copy.
    let data = flush
        .path()
        .join("flush-stop/rank-1")
        .join(format!("epoch-{:020}.data", record.epoch));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, 100).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], 100).unwrap();
    drop(file);
    let job = start("flush-stop", flush.path(), &[]);
    let (ended, _store) = job.finish();
    let out = &ended.output;
    assert_eq!(ended.status.code(), Some(1), "{out}");
    assert!(
        out.contains("cannot resume job flush-stop from the flushed copy"),
        "{out}"
    );
    assert!(out.contains("rank 1:") && out.contains("chunk 0"), "{out}");
    assert_eq!(
        read_job_record(flush.path(), "flush-stop").unwrap(),
        Some(record),
        "the flushed copy is kept"
    );
}
