//! Typed replies rendered for people, at the edge (`pmrun ctl`).

use pm_core::proto::{Decision, Health, JobStatus, Recovery};

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
    let mut transports: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.health != Health::Dead)
        .filter_map(|n| n.transport.as_deref())
        .collect();
    transports.sort_unstable();
    transports.dedup();
    if !transports.is_empty() {
        out.push_str(&format!("  replicas move over {}\n", transports.join(", ")));
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
    if let Some(dir) = &s.flush_dir {
        match s.flushed {
            Some(k) => out.push_str(&format!(
                "  flushed to {dir}: epoch {} at step {}\n",
                k.epoch, k.step
            )),
            None => out.push_str(&format!("  nothing flushed to {dir} yet\n")),
        }
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

/// A balancing decision, with its numbers.
pub fn decision(d: &Decision) -> String {
    let moves: Vec<String> = d
        .moves
        .iter()
        .map(|(r, from, to)| format!("{r}:{from}→{to}"))
        .collect();
    format!(
        "balance at step {}: {}; step {:.4} s now, {:.4} s after {} move(s) [{}], lower bound {:.4} s; \
         gain {:.1} s over {} remaining steps ({}), confidence {:.2}, against a freeze of {:.2} s",
        d.step,
        d.outcome,
        d.step_s,
        d.predicted_s,
        d.moves.len(),
        moves.join(" "),
        d.lower_bound_s,
        d.gain_s,
        d.remaining_steps,
        d.remaining_from,
        d.confidence,
        d.freeze_s
    )
}
