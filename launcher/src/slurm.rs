//! A Slurm allocation as pmrun sees it from inside: its nodes and tasks
//! (from the job's environment) and each node's address (from
//! `scontrol show node`). The parsing is pure; only [`node_addresses`]
//! runs a command.

use crate::hosts::{self, Host, HostError};
use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Command;

/// The allocation pmrun runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub job_id: String,
    /// Every node with the tasks Slurm allocated on it.
    pub nodes: Vec<Host>,
    /// The node this pmrun runs on (`SLURMD_NODENAME`), if Slurm says.
    pub this_node: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(transparent)]
    Hosts(#[from] HostError),
    #[error(
        "SLURM_TASKS_PER_NODE lists {counts} node(s) but SLURM_JOB_NODELIST {nodes}: \
         is this pmrun inside the allocation it was started in?"
    )]
    Mismatch { counts: usize, nodes: usize },
    #[error("cannot run {program} to find the allocation's node addresses: {source}")]
    Scontrol {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed: {stderr}")]
    ScontrolFailed { program: String, stderr: String },
    #[error("cannot find the address of node {node} ({addr:?}): {reason}")]
    Address {
        node: String,
        addr: String,
        reason: String,
    },
}

impl Allocation {
    /// The allocation in the environment, or `None` outside Slurm.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, SlurmError> {
        let (Some(job_id), Some(list)) = (var("SLURM_JOB_ID"), var("SLURM_JOB_NODELIST")) else {
            return Ok(None);
        };
        let names = hosts::expand_slurm_nodelist(&list)?;
        // Tasks per node, else CPUs per node, else one each.
        let counts = match var("SLURM_TASKS_PER_NODE").or_else(|| var("SLURM_JOB_CPUS_PER_NODE")) {
            Some(c) => hosts::expand_slurm_counts(&c)?,
            None => vec![1; names.len()],
        };
        if counts.len() != names.len() {
            return Err(SlurmError::Mismatch {
                counts: counts.len(),
                nodes: names.len(),
            });
        }
        Ok(Some(Self {
            job_id,
            nodes: names
                .into_iter()
                .zip(counts)
                .map(|(name, slots)| Host { name, slots })
                .collect(),
            this_node: var("SLURMD_NODENAME"),
        }))
    }

    pub fn from_env() -> Result<Option<Self>, SlurmError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// The value of `KEY=value` (`key` is `"KEY="`) in one line of
/// `scontrol ... -o` output.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// `NodeAddr` of every node in `scontrol show node -o` output.
pub fn parse_node_addrs(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let field = |key| field(line, key).map(str::to_owned);
            Some((field("NodeName=")?, field("NodeAddr=")?))
        })
        .collect()
}

/// The IP address a node's `NodeAddr` (an address or a host name) stands for.
pub fn resolve(node: &str, addr: &str) -> Result<IpAddr, SlurmError> {
    if let Ok(ip) = addr.parse() {
        return Ok(ip);
    }
    let fail = |reason: String| SlurmError::Address {
        node: node.to_owned(),
        addr: addr.to_owned(),
        reason,
    };
    (addr, 0)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .map(|s| s.ip())
        .next()
        .ok_or_else(|| fail("it resolves to no address".into()))
}

/// The address of every node of `names`, asked of `scontrol`.
pub fn node_addresses(scontrol: &Path, names: &[String]) -> Result<Vec<IpAddr>, SlurmError> {
    let addrs = parse_node_addrs(&show_nodes(scontrol, names)?);
    names
        .iter()
        .map(|n| resolve(n, addrs.get(n).map_or(n.as_str(), String::as_str)))
        .collect()
}

/// A node Slurm wants emptied: drained or draining by an administrator,
/// failing, or waiting for a reboot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaving {
    pub node: String,
    /// What Slurm says: its state and, if given, the reason.
    pub why: String,
}

/// The nodes in `scontrol show node -o` output whose state asks them to be
/// emptied (`DRAIN`, `FAIL`, `REBOOT_REQUESTED` among its flags). A node
/// that is already `DOWN` is the heartbeats' business, not a drain's.
pub fn leaving_nodes(text: &str) -> Vec<Leaving> {
    text.lines()
        .filter_map(|line| {
            let node = field(line, "NodeName=")?.to_owned();
            let state = field(line, "State=")?;
            let flags: Vec<&str> = state.split('+').collect();
            let leaving = flags.iter().any(|f| {
                matches!(
                    *f,
                    "DRAIN" | "DRAINING" | "DRAINED" | "FAIL" | "FAILING" | "REBOOT_REQUESTED"
                )
            });
            if !leaving || flags[0].trim_end_matches('*') == "DOWN" {
                return None;
            }
            // The reason runs to its "[user@time]" stamp or the line's end.
            let reason = line
                .split_once(" Reason=")
                .map(|(_, r)| r.split(" [").next().unwrap_or(r).trim().to_owned())
                .filter(|r| !r.is_empty() && r != "(null)");
            let why = match reason {
                Some(r) => format!("{state} in Slurm: {r}"),
                None => format!("{state} in Slurm"),
            };
            Some(Leaving { node, why })
        })
        .collect()
}

/// `scontrol show node -o` of `names`: its output.
pub fn show_nodes(scontrol: &Path, names: &[String]) -> Result<String, SlurmError> {
    let program = scontrol.display().to_string();
    let out = Command::new(scontrol)
        .args(["show", "node", "-o", &names.join(",")])
        .output()
        .map_err(|source| SlurmError::Scontrol {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(SlurmError::ScontrolFailed {
            program,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(vars: &[(&str, &str)]) -> Result<Option<Allocation>, SlurmError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        Allocation::from_vars(|k| map.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn the_allocation_comes_from_the_environment() {
        assert_eq!(alloc(&[]).unwrap(), None);
        let a = alloc(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NODELIST", "n[1-3]"),
            ("SLURM_TASKS_PER_NODE", "2(x2),1"),
            ("SLURMD_NODENAME", "n1"),
        ])
        .unwrap()
        .unwrap();
        let slots: Vec<(&str, u32)> = a.nodes.iter().map(|h| (h.name.as_str(), h.slots)).collect();
        assert_eq!(slots, [("n1", 2), ("n2", 2), ("n3", 1)]);
        assert_eq!(a.this_node.as_deref(), Some("n1"));
        let err = alloc(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NODELIST", "n[1-3]"),
            ("SLURM_TASKS_PER_NODE", "2"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("lists 1 node(s)"), "{err}");
    }

    #[test]
    fn drained_failing_and_rebooting_nodes_are_leaving() {
        let text = "NodeName=n1 NodeAddr=a State=IDLE Reason=(null)\n\
                    NodeName=n2 NodeAddr=b State=MIXED+DRAIN Weight=1 Reason=disk swap [root@2026-12-02T03:00:00]\n\
                    NodeName=n3 State=ALLOCATED+FAIL\n\
                    NodeName=n4 State=IDLE+REBOOT_REQUESTED\n\
                    NodeName=n5 State=DOWN*+DRAIN Reason=Not responding\n\
                    NodeName=n6 State=ALLOCATED+COMPLETING\n";
        let leaving = leaving_nodes(text);
        let names: Vec<&str> = leaving.iter().map(|l| l.node.as_str()).collect();
        assert_eq!(names, ["n2", "n3", "n4"]);
        assert_eq!(leaving[0].why, "MIXED+DRAIN in Slurm: disk swap");
        assert_eq!(leaving[1].why, "ALLOCATED+FAIL in Slurm");
    }

    #[test]
    fn node_addresses_come_from_scontrol_output() {
        let text = "NodeName=n1 Arch=x86_64 CoresPerSocket=1 NodeAddr=127.0.0.2 NodeHostName=n1\n\
                    NodeName=n2 NodeAddr=localhost State=IDLE\n";
        let addrs = parse_node_addrs(text);
        assert_eq!(addrs["n1"], "127.0.0.2");
        assert_eq!(
            resolve("n1", &addrs["n1"]).unwrap().to_string(),
            "127.0.0.2"
        );
        assert!(resolve("n2", &addrs["n2"]).unwrap().is_loopback());
        let err = resolve("n9", "no-such-host.invalid")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node n9"), "{err}");
    }
}
