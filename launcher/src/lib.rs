//! `pm-launcher`: the `pmrun` launcher (which also coordinates a running job)
//! and the `pmd` node agent (one per node, which holds and replicates the
//! checkpoints of the ranks on its node).
//!
//! Neither launching nor the agent is built yet; both binaries say so and
//! exit with an error rather than pretend to run a job.

/// The message both binaries print until launching exists.
pub const NOT_YET: &str = "launching jobs is not built yet in this pmrun release; \
the checkpoint store and `pmbench ckpt` are (see README.md, 'State of the capabilities')";
