//! `pmrun ctl status` and the live status line.

use super::Coordinator;
use super::state::Health;
use serde_json::json;

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

pub fn line(c: &Coordinator) -> String {
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

pub fn json(c: &Coordinator) -> String {
    let nodes: Vec<_> = c
        .spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let ranks = c.state.ranks_on(i);
            let pids: Vec<u32> = ranks
                .iter()
                .filter_map(|r| c.pids.get(r).copied())
                .collect();
            json!({
                "name": n.name,
                "addr": n.addr.to_string(),
                "health": c.state.nodes[i].health,
                "spare": n.spare,
                "holds_replicas": c.state.nodes[i].holds_replicas,
                "ranks": ranks,
                "rank_pids": pids,
                "agent_pid": c.agents[i].pid,
                "control": c.agents[i].control,
                "store": n.store,
                "log": c.agents[i].log,
                "last_heard_s": c.last_seen[i].elapsed().as_secs_f64(),
            })
        })
        .collect();
    let newest = c.state.newest_published();
    let replicas: Vec<Vec<&str>> = (0..c.spec.ranks)
        .map(|r| {
            c.state
                .holders_of_committed(r)
                .into_iter()
                .map(|n| c.spec.nodes[n].name.as_str())
                .collect()
        })
        .collect();
    let partners: Vec<Vec<&str>> = c
        .state
        .partners
        .iter()
        .map(|p| p.iter().map(|&n| c.spec.nodes[n].name.as_str()).collect())
        .collect();
    let last = c.commits.last();
    json!({
        "job": c.spec.job,
        "ranks": c.spec.ranks,
        "replicas": c.spec.replicas,
        "running": c.mpirun_pid.is_some(),
        "launcher_pid": c.mpirun_pid,
        "restarts": c.restarts,
        "nodes": nodes,
        "placement": c.state.placement.iter().map(|&n| c.spec.nodes[n].name.as_str()).collect::<Vec<_>>(),
        "partners": partners,
        "committed": c.state.committed.map(|k| json!({"epoch": k.epoch, "step": k.step})),
        "committed_bytes": c.state.committed_bytes.map(|(s, w)| json!({"state": s, "written": w})),
        "committed_holders": replicas,
        "newest_published": newest,
        "newest_bytes": newest.and_then(|e| c.state.epoch_bytes(e)).map(|(s, w)| json!({"state": s, "written": w})),
        "last_commit_age_s": last.map(|(t, _)| t.elapsed().as_secs_f64()),
        "steps_per_s": steps_per_second(c),
        "replication_lag_s": replication_lag(c),
        "recoveries": c.recoveries,
    })
    .to_string()
}

pub fn text(c: &Coordinator) -> String {
    let mut out = format!(
        "job {}: {}\n",
        c.spec.job,
        line(c).trim_start_matches("pmrun: ")
    );
    for (i, n) in c.spec.nodes.iter().enumerate() {
        let ranks: Vec<String> = c.state.ranks_on(i).iter().map(u32::to_string).collect();
        let health = match c.state.nodes[i].health {
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
    match c.state.committed {
        Some(k) => {
            let size = c.state.committed_bytes.map_or(String::new(), |(s, w)| {
                format!(", {s} bytes of state ({w} written)")
            });
            let age = c.commits.last().map_or(String::new(), |(t, _)| {
                format!(", {:.1} s ago", t.elapsed().as_secs_f64())
            });
            out.push_str(&format!(
                "  committed epoch {} at step {}{age}{size}; replicas per rank: {}\n",
                k.epoch,
                k.step,
                c.state.effective_replicas()
            ));
        }
        None => out.push_str("  no checkpoint committed yet\n"),
    }
    for r in &c.recoveries {
        out.push_str(&format!(
            "  {} of {}: {:.2} s in all\n",
            r.kind,
            r.nodes.join(", "),
            r.total_s
        ));
    }
    out
}
