//! Parsing of pmrun's balancing options: per-node CPUs, per-rank weights,
//! an explicit placement, and where the history of earlier runs lives.
//! Pure functions with errors that name the option and what to do.

use std::path::{Path, PathBuf};

/// `--node-cpus C` or `C,C,...` (one per node): the CPUs of each of `nodes`.
pub fn node_cpus(list: &str, nodes: usize) -> Result<Vec<f64>, String> {
    let values = numbers(list).map_err(|e| format!("--node-cpus {list}: {e}"))?;
    if values.iter().any(|&c| !(c > 0.0 && c.is_finite())) {
        return Err(format!(
            "--node-cpus {list}: expected numbers of CPUs greater than 0"
        ));
    }
    match values.len() {
        1 => Ok(vec![values[0]; nodes]),
        n if n == nodes => Ok(values),
        n => Err(format!(
            "--node-cpus {list}: {n} values for {nodes} nodes (give one for all, or one per node)"
        )),
    }
}

/// `--weights W,W,...` or a file of numbers: one compute time per step per rank.
pub fn weights(arg: &str, ranks: u32) -> Result<Vec<f64>, String> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path)
            .map_err(|e| format!("--weights {arg}: cannot read it: {e}"))?
    } else {
        arg.to_owned()
    };
    let values = numbers(&text).map_err(|e| format!("--weights {arg}: {e}"))?;
    if values.len() != ranks as usize {
        return Err(format!(
            "--weights {arg}: {} weights for {ranks} ranks (give one per rank)",
            values.len()
        ));
    }
    if values.iter().any(|&w| !(w >= 0.0 && w.is_finite())) {
        return Err(format!("--weights {arg}: weights must be numbers >= 0"));
    }
    Ok(values)
}

/// `--placement NODE,NODE,...`: the index of each rank's node in `names`.
pub fn placement(list: &str, names: &[String], ranks: u32) -> Result<Vec<usize>, String> {
    let parts: Vec<&str> = list.split(',').map(str::trim).collect();
    if parts.len() != ranks as usize {
        return Err(format!(
            "--placement {list}: {} nodes for {ranks} ranks (name one node per rank)",
            parts.len()
        ));
    }
    parts
        .iter()
        .map(|p| {
            names.iter().position(|n| n == p).ok_or_else(|| {
                format!(
                    "--placement: no node {p:?} in this job (nodes: {})",
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// Numbers separated by commas or whitespace.
fn numbers(text: &str) -> Result<Vec<f64>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f64>()
                .map_err(|_| format!("{s:?} is not a number"))
        })
        .collect()
}

/// Where the history of earlier runs is kept: `--history FILE` (or
/// `PM_HISTORY`), `none` for no history, else per user in
/// `$XDG_STATE_HOME/pmrun/history` (`~/.local/state/pmrun/history`).
pub fn history_path(arg: Option<&str>) -> Option<PathBuf> {
    match arg {
        Some("none") | Some("off") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let state = std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))?;
            Some(state.join("pmrun").join("history"))
        }
    }
}

/// Memory this machine has available for rank state (MemAvailable).
pub fn mem_available() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_cpus_are_one_for_all_or_one_each() {
        assert_eq!(node_cpus("0.5", 3).unwrap(), [0.5; 3]);
        assert_eq!(
            node_cpus("0.125,0.5,0.5,0.5", 4).unwrap(),
            [0.125, 0.5, 0.5, 0.5]
        );
        assert!(
            node_cpus("1,2", 3)
                .unwrap_err()
                .contains("2 values for 3 nodes")
        );
        assert!(node_cpus("1,-2", 2).unwrap_err().contains("greater than 0"));
        assert!(
            node_cpus("fast", 2)
                .unwrap_err()
                .contains("\"fast\" is not a number")
        );
    }

    #[test]
    fn weights_come_as_a_list_or_a_file() {
        assert_eq!(weights("1,2 3", 3).unwrap(), [1.0, 2.0, 3.0]);
        assert!(
            weights("1,2", 3)
                .unwrap_err()
                .contains("2 weights for 3 ranks")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w");
        std::fs::write(&file, "0.5\n0.25\n").unwrap();
        assert_eq!(weights(file.to_str().unwrap(), 2).unwrap(), [0.5, 0.25]);
    }

    #[test]
    fn a_placement_names_a_node_per_rank() {
        let names = vec!["node1".to_string(), "node2".to_string()];
        assert_eq!(
            placement("node2,node1,node2", &names, 3).unwrap(),
            [1, 0, 1]
        );
        assert!(
            placement("node3,node1", &names, 2)
                .unwrap_err()
                .contains("no node \"node3\"")
        );
        assert!(
            placement("node1", &names, 2)
                .unwrap_err()
                .contains("1 nodes for 2 ranks")
        );
    }

    #[test]
    fn history_can_be_named_or_turned_off() {
        assert_eq!(history_path(Some("none")), None);
        assert_eq!(history_path(Some("/x/h")), Some(PathBuf::from("/x/h")));
    }
}
