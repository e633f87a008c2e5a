//! Inside a Slurm allocation: looks at the job's nodes in Slurm every
//! `every` (`scontrol show node`) and hands the coordinator the nodes Slurm
//! wants emptied — an administrator's `scontrol update nodename=N
//! state=drain`, a failing node, a requested reboot — as
//! [`Event::SlurmLeaving`]; the coordinator drains them. Slurm offers no
//! callback for this to a job (`strigger` runs on the controller's host).

use super::driver::Input;
use super::job::Event;
use crate::slurm;
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
    // The last failure to ask scontrol, said once.
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
        let nodes: Vec<(String, String)> = slurm::leaving_nodes(&text)
            .into_iter()
            .map(|l| (l.node, l.why))
            .collect();
        if !nodes.is_empty()
            && inputs
                .send(Input::Core(Event::SlurmLeaving { nodes }))
                .is_err()
        {
            return; // the job has ended
        }
    }
}
