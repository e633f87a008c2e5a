//! `pmrun ctl status` and the live status line.

use super::Coordinator;
use pm_core::proto::{Committed, EpochBytes, Health, JobStatus, NodeStatus, Recovery};

/// Steps per second between the last two commits.
fn steps_per_second(c: &Coordinator) -> Option<f64> {
    let [.., (t0, a), (t1, b)] = c.commits.as_slice() else {
        return None;
    };
    let dt = t1.duration_since(*t0).as_secs_f64();
    (dt > 0.0).then(|| (b.step - a.step) as f64 / dt)
}

/// Seconds the oldest uncommitted epoch has waited for its replicas.
fn replication_lag(c: &Coordinator) -> f64 {
    c.published_at
        .values()
        .map(|t| t.elapsed().as_secs_f64())
        .fold(0.0, f64::max)
}

pub(super) fn line(c: &Coordinator) -> String {
    let alive = c.state.usable_nodes();
    let committed = c
        .state
        .committed
        .map_or("none".into(), |k| format!("{} (step {})", k.epoch, k.step));
    let rate = steps_per_second(c).map_or("-".into(), |r| format!("{r:.1}"));
    format!(
        "pmrun: {} ranks on {alive} nodes | {rate} steps/s | committed epoch {committed} | replication lag {:.1} s",
        c.spec.ranks,
        replication_lag(c)
    )
}

pub(super) fn report(c: &Coordinator) -> JobStatus {
    let name = |n: usize| c.spec.nodes[n].name.clone();
    let nodes = c
        .spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let ranks = c.state.ranks_on(i);
            let rank_pids = ranks
                .iter()
                .filter_map(|r| c.pids.get(r).copied())
                .collect();
            NodeStatus {
                name: n.name.clone(),
                addr: n.addr.to_string(),
                health: c.state.nodes[i].health,
                spare: n.spare,
                holds_replicas: c.state.nodes[i].holds_replicas,
                ranks,
                rank_pids,
                agent_pid: Some(c.agents[i].pid),
                control: Some(c.agents[i].control.clone()),
                store: n.store.display().to_string(),
                log: Some(c.agents[i].log.display().to_string()),
                last_heard_s: c.last_seen[i].elapsed().as_secs_f64(),
            }
        })
        .collect();
    let newest = c.state.newest_published();
    let bytes = |b: Option<(u64, u64)>| b.map(|(state, written)| EpochBytes { state, written });
    JobStatus {
        job: c.spec.job.clone(),
        ranks: c.spec.ranks,
        replicas: c.spec.replicas,
        effective_replicas: c.state.effective_replicas(),
        running: c.mpirun_pid.is_some(),
        phase: if c.mpirun_pid.is_some() {
            "running"
        } else {
            "stopped"
        }
        .into(),
        launcher_pid: c.mpirun_pid,
        restarts: c.restarts,
        nodes,
        placement: c.state.placement.iter().map(|&n| name(n)).collect(),
        partners: c
            .state
            .partners
            .iter()
            .map(|p| p.iter().map(|&n| name(n)).collect())
            .collect(),
        committed: c.state.committed.map(|k| Committed {
            epoch: k.epoch,
            step: k.step,
        }),
        committed_bytes: bytes(c.state.committed_bytes),
        committed_holders: (0..c.spec.ranks)
            .map(|r| {
                c.state
                    .holders_of_committed(r)
                    .into_iter()
                    .map(name)
                    .collect()
            })
            .collect(),
        newest_published: newest,
        newest_bytes: bytes(newest.and_then(|e| c.state.epoch_bytes(e))),
        last_commit_age_s: c.commits.last().map(|(t, _)| t.elapsed().as_secs_f64()),
        steps_per_s: steps_per_second(c),
        replication_lag_s: replication_lag(c),
        recoveries: c.recoveries.clone(),
    }
}

/// `pmrun ctl status` for people.
pub fn text(s: &JobStatus) -> String {
    let usable = s.nodes.iter().filter(|n| n.health == Health::Alive).count();
    let committed = s
        .committed
        .map_or("none".into(), |k| format!("{} (step {})", k.epoch, k.step));
    let rate = s.steps_per_s.map_or("-".into(), |r| format!("{r:.1}"));
    let mut out = format!(
        "job {}: {} ranks on {usable} nodes | {rate} steps/s | committed epoch {committed} | replication lag {:.1} s\n",
        s.job, s.ranks, s.replication_lag_s
    );
    for n in &s.nodes {
        let ranks: Vec<String> = n.ranks.iter().map(u32::to_string).collect();
        let health = match n.health {
            Health::Alive => "alive",
            Health::Drained => "drained",
            Health::Dead => "dead",
        };
        out.push_str(&format!(
            "  {:<10} {:<8} {:<15} ranks [{}]{}\n",
            n.name,
            health,
            n.addr,
            ranks.join(","),
            if n.spare { " (spare)" } else { "" }
        ));
    }
    match s.committed {
        Some(k) => {
            let size = s.committed_bytes.map_or(String::new(), |b| {
                format!(", {} bytes of state ({} written)", b.state, b.written)
            });
            let age = s
                .last_commit_age_s
                .map_or(String::new(), |a| format!(", {a:.1} s ago"));
            out.push_str(&format!(
                "  committed epoch {} at step {}{age}{size}; replicas per rank: {}\n",
                k.epoch, k.step, s.effective_replicas
            ));
        }
        None => out.push_str("  no checkpoint committed yet\n"),
    }
    for r in &s.recoveries {
        out.push_str(&format!(
            "  {} of {}: {:.2} s in all\n",
            r.kind,
            r.nodes.join(", "),
            r.total_s
        ));
    }
    out
}

/// What a drain did, for the operator who asked for it.
pub fn drained(r: &Recovery) -> String {
    let moved: Vec<String> = r
        .moved
        .iter()
        .map(|(rank, _, to)| format!("{rank}→{to}"))
        .collect();
    format!(
        "node {} drained: stopped at a checkpoint and replicated in {:.2} s, placed in {:.2} s, \
         {} rank(s) moved ({}); resuming from epoch {} (step {})",
        r.nodes.join(", "),
        r.stop_s,
        r.place_s,
        r.moved.len(),
        moved.join(" "),
        r.epoch,
        r.step
    )
}
