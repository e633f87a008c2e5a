//! `pmrun ctl`: operators reach a running job through a Unix socket in the
//! job's run directory (`<store>/.pmrun/<job>/ctl.sock`), authenticated with
//! the job's secret, which only the job's user can read.

use super::driver::Input;
use anyhow::{Context, bail};
use pm_core::proto::{CtlReply, CtlRequest};
use pm_core::wire::{JobSecret, Limits, Role, Session};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// The directory holding a job's secret, sockets and agent logs.
pub fn run_dir(store: &Path, job: &str) -> PathBuf {
    store.join(".pmrun").join(job)
}

/// Serves control requests until the listener is closed.
pub fn serve(listener: UnixListener, secret: JobSecret, inputs: mpsc::Sender<Input>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let secret = secret.clone();
        let inputs = inputs.clone();
        let _ = std::thread::Builder::new()
            .name("pmrun-ctl".into())
            .spawn(move || {
                let served = (|| -> anyhow::Result<()> {
                    let mut session = Session::accept(
                        &mut stream,
                        &secret,
                        "ctl socket",
                        "pmrun",
                        Limits::default(),
                    )?;
                    let req: CtlRequest = session.recv(&mut stream)?;
                    let (tx, rx) = mpsc::channel();
                    inputs.send(Input::Ctl { req, reply: tx })?;
                    let reply = rx.recv().unwrap_or(CtlReply::Refused {
                        reason: "the job ended before answering".into(),
                    });
                    session.send(&mut stream, &reply)?;
                    Ok(())
                })();
                if let Err(e) = served {
                    tracing::warn!(error = %format!("{e:#}"), "control connection rejected");
                }
            });
    }
}

/// Sends `req` to the job `job` (or the only job) under `store`; the reply.
pub fn request(store: &Path, job: Option<&str>, req: CtlRequest) -> anyhow::Result<CtlReply> {
    let base = store.join(".pmrun");
    let job = match job {
        Some(j) => j.to_owned(),
        None => {
            let running: Vec<String> = std::fs::read_dir(&base)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().join("ctl.sock").exists())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            match running.as_slice() {
                [one] => one.clone(),
                [] => bail!(
                    "no running pmrun job has its control socket under {}",
                    base.display()
                ),
                many => bail!(
                    "several jobs run under {}: name one with --job ({})",
                    base.display(),
                    many.join(", ")
                ),
            }
        }
    };
    let dir = run_dir(store, &job);
    let secret = crate::agent::read_secret(&dir.join("secret"))?;
    let sock = dir.join("ctl.sock");
    let mut stream = UnixStream::connect(&sock).with_context(|| {
        format!(
            "cannot reach job {job} at {} (has it ended?)",
            sock.display()
        )
    })?;
    let mut session = Session::connect(
        &mut stream,
        &secret,
        &sock.display().to_string(),
        "pmrun-ctl",
        Role::Launcher,
        Limits::default(),
    )?;
    session.send(&mut stream, &req)?;
    Ok(session.recv(&mut stream)?)
}
