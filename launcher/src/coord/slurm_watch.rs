//! Inside a Slurm allocation: drains, as `pmrun ctl drain` does, every node
//! of the job that Slurm wants emptied — an administrator's
//! `scontrol update nodename=N state=drain`, a failing node, a requested
//! reboot. Slurm offers no callback for this to a job (`strigger` runs on
//! the controller's host), so the watcher asks `scontrol` every `every`.

use super::driver::Input;
use crate::slurm;
use pm_core::proto::{CtlReply, CtlRequest};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// Starts the watcher; it ends with the job (when `inputs` closes).
pub fn start(
    scontrol: PathBuf,
    names: Vec<String>,
    every: Duration,
    inputs: mpsc::Sender<Input>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pmrun-slurm-watch".into())
        .spawn(move || watch(&scontrol, &names, every, &inputs))
        .map(drop)
}

fn watch(
    scontrol: &std::path::Path,
    names: &[String],
    every: Duration,
    inputs: &mpsc::Sender<Input>,
) {
    // Nodes drained (never asked again), and the last refusal said per node.
    let mut drained: HashSet<String> = HashSet::new();
    let mut refused: HashMap<String, String> = HashMap::new();
    let mut failing: Option<String> = None;
    loop {
        std::thread::sleep(every);
        let text = match slurm::show_nodes(scontrol, names) {
            Ok(text) => {
                failing = None;
                text
            }
            Err(e) => {
                let e = e.to_string();
                if failing.as_ref() != Some(&e) {
                    eprintln!("pmrun: cannot look at the allocation's nodes: {e}");
                    failing = Some(e);
                }
                continue;
            }
        };
        for leaving in slurm::leaving_nodes(&text) {
            if drained.contains(&leaving.node) {
                continue;
            }
            if !refused.contains_key(&leaving.node) {
                eprintln!(
                    "pmrun: node {} is {}: draining it",
                    leaving.node, leaving.why
                );
            }
            let (tx, rx) = mpsc::channel();
            let req = CtlRequest::Drain {
                node: leaving.node.clone(),
            };
            if inputs.send(Input::Ctl { req, reply: tx }).is_err() {
                return; // the job has ended
            }
            match rx.recv() {
                Ok(CtlReply::Refused { reason }) => {
                    // Said once per reason; asked again at the next look.
                    if refused.get(&leaving.node) != Some(&reason) {
                        eprintln!("pmrun: node {} is not drained yet: {reason}", leaving.node);
                        refused.insert(leaving.node.clone(), reason);
                    }
                }
                Ok(_) => {
                    refused.remove(&leaving.node);
                    drained.insert(leaving.node);
                }
                Err(_) => return,
            }
        }
    }
}
