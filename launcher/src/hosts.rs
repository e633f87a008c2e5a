//! Where ranks may run: hostfiles, `-H` lists, Slurm allocations, or this
//! machine. Pure parsing; the launcher decides what to do with the result.

use std::path::Path;

/// A node and how many ranks it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub slots: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read hostfile {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} line {line}: {reason}: {text:?} (expected `host [slots=N]`)")]
    Malformed {
        origin: String,
        line: usize,
        text: String,
        reason: String,
    },
    #[error("-H {0:?}: expected host[:slots],host[:slots],...")]
    BadHostList(String),
    #[error("Slurm node list {0:?} cannot be expanded")]
    BadSlurmList(String),
    #[error("SLURM_TASKS_PER_NODE {0:?}: expected counts such as 2(x3),1")]
    BadSlurmTasks(String),
    #[error("{0} lists no hosts")]
    Empty(String),
}

fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Parses an Open MPI-style hostfile: `host [slots=N] [max_slots=M]` per
/// line, `#` comments. `origin` names the file in errors.
pub fn parse_hostfile(text: &str, origin: &str) -> Result<Vec<Host>, HostError> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let malformed = |reason: &str| HostError::Malformed {
            origin: origin.to_owned(),
            line: i + 1,
            text: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        if !valid_host_name(name) {
            return Err(malformed("not a host name"));
        }
        let mut slots = 1;
        for word in words {
            match word.split_once('=') {
                Some(("slots", n)) => {
                    slots = n
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| malformed("slots must be a positive number"))?;
                }
                Some(("max_slots" | "max-slots", _)) => {}
                _ => return Err(malformed(&format!("unknown setting {word:?}"))),
            }
        }
        hosts.push(Host {
            name: name.to_owned(),
            slots,
        });
    }
    if hosts.is_empty() {
        return Err(HostError::Empty(origin.to_owned()));
    }
    Ok(hosts)
}

/// Reads and parses a hostfile.
pub fn read_hostfile(path: &Path) -> Result<Vec<Host>, HostError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostError::Unreadable {
        path: path.display().to_string(),
        source,
    })?;
    parse_hostfile(&text, &path.display().to_string())
}

/// Parses `-H host[:slots],host[:slots],...`.
pub fn parse_host_list(list: &str) -> Result<Vec<Host>, HostError> {
    let bad = || HostError::BadHostList(list.to_owned());
    list.split(',')
        .map(|item| {
            let (name, slots) = match item.split_once(':') {
                Some((n, s)) => (n, s.parse().ok().filter(|&s: &u32| s > 0).ok_or_else(bad)?),
                None => (item, 1),
            };
            if !valid_host_name(name) {
                return Err(bad());
            }
            Ok(Host {
                name: name.to_owned(),
                slots,
            })
        })
        .collect()
}

/// Expands Slurm's per-node counts such as `2(x3),1` (SLURM_TASKS_PER_NODE,
/// SLURM_JOB_CPUS_PER_NODE) into one count per node.
pub fn expand_slurm_counts(list: &str) -> Result<Vec<u32>, HostError> {
    let bad = || HostError::BadSlurmTasks(list.to_owned());
    let mut counts = Vec::new();
    for item in list.trim().split(',') {
        let (count, times) = match item.split_once("(x") {
            Some((c, t)) => (c, t.strip_suffix(')').ok_or_else(bad)?),
            None => (item, "1"),
        };
        let count: u32 = count.parse().map_err(|_| bad())?;
        let times: usize = times.parse().map_err(|_| bad())?;
        if times == 0 || counts.len() + times > 1_000_000 {
            return Err(bad());
        }
        counts.extend(std::iter::repeat_n(count, times));
    }
    Ok(counts)
}

/// Expands a Slurm hostlist such as `n[01-03,7],gpu1` into host names,
/// keeping the zero padding of ranges.
pub fn expand_slurm_nodelist(list: &str) -> Result<Vec<String>, HostError> {
    let bad = || HostError::BadSlurmList(list.to_owned());
    let mut names = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        // One item: a prefix, optionally one bracket group, up to a top-level comma.
        let end = rest
            .char_indices()
            .scan(0i32, |depth, (i, c)| {
                *depth += match c {
                    '[' => 1,
                    ']' => -1,
                    _ => 0,
                };
                Some((i, c, *depth))
            })
            .find(|&(_, c, depth)| c == ',' && depth == 0)
            .map_or(rest.len(), |(i, _, _)| i);
        let item = &rest[..end];
        rest = rest[end..].trim_start_matches(',');
        match item.split_once('[') {
            None if valid_host_name(item) => names.push(item.to_owned()),
            None => return Err(bad()),
            Some((prefix, ranges)) => {
                let ranges = ranges.strip_suffix(']').ok_or_else(bad)?;
                for range in ranges.split(',') {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    let (a, b): (u64, u64) = (
                        lo.parse().map_err(|_| bad())?,
                        hi.parse().map_err(|_| bad())?,
                    );
                    if a > b || b - a > 100_000 {
                        return Err(bad());
                    }
                    for n in a..=b {
                        names.push(format!("{prefix}{n:0width$}", width = lo.len()));
                    }
                }
            }
        }
    }
    if names.is_empty() {
        return Err(HostError::Empty("the Slurm node list".into()));
    }
    Ok(names)
}

/// This machine as one node with as many slots as it has cores.
/// Whether `name` is this machine: `localhost`, a loopback address, or
/// this machine's host name.
pub fn is_this_machine(name: &str) -> bool {
    if name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
    {
        return true;
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return false;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let own = String::from_utf8_lossy(&buf[..len]);
    name == own || own.split('.').next() == Some(name)
}

pub fn this_machine() -> Vec<Host> {
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    vec![Host {
        name: "localhost".into(),
        slots,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfiles_parse_with_comments_and_slots() {
        let hosts = parse_hostfile(
            "# cluster\nn1 slots=4\n\nn2   # one slot\nn3 slots=2 max_slots=8\n",
            "hf",
        )
        .unwrap();
        let got: Vec<(&str, u32)> = hosts.iter().map(|h| (h.name.as_str(), h.slots)).collect();
        assert_eq!(got, [("n1", 4), ("n2", 1), ("n3", 2)]);
    }

    #[test]
    fn malformed_hostfiles_name_the_line() {
        for (text, needle) in [
            ("n1\nn2 slots=0\n", "line 2"),
            ("n1 slots=x\n", "slots must be a positive number"),
            ("n1 cores=3\n", "unknown setting"),
            ("bad/host\n", "not a host name"),
        ] {
            let err = parse_hostfile(text, "hf").unwrap_err().to_string();
            assert!(err.contains(needle) && err.starts_with("hf line"), "{err}");
        }
        assert!(matches!(
            parse_hostfile("# nothing\n", "hf"),
            Err(HostError::Empty(_))
        ));
    }

    #[test]
    fn host_lists_parse() {
        let hosts = parse_host_list("a:2,b").unwrap();
        assert_eq!((hosts[0].slots, hosts[1].slots), (2, 1));
        for bad in ["a:0", "a:x", "", "a,,b", "a b"] {
            assert!(parse_host_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slurm_counts_expand() {
        assert_eq!(expand_slurm_counts("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(expand_slurm_counts("4").unwrap(), [4]);
        for bad in ["", "x", "2(x", "2(x0)", "2(3)", "-1"] {
            assert!(expand_slurm_counts(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slurm_node_lists_expand() {
        assert_eq!(
            expand_slurm_nodelist("n[01-03,7],gpu1").unwrap(),
            ["n01", "n02", "n03", "n7", "gpu1"]
        );
        assert_eq!(expand_slurm_nodelist("single").unwrap(), ["single"]);
        assert_eq!(
            expand_slurm_nodelist("a[8-10]").unwrap(),
            ["a8", "a9", "a10"]
        );
        for bad in ["n[3-1]", "n[1-", "n[x]", ""] {
            assert!(expand_slurm_nodelist(bad).is_err(), "{bad:?}");
        }
    }
}
