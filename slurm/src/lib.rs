//! `pm-slurm`: pmrun's Slurm SPANK plugin, `libpm_slurm.so`, loaded from
//! plugstack.conf (`required /path/libpm_slurm.so [pmrun=/path/to/pmrun]`).
//! It gives srun, sbatch and salloc pmrun's options (`--pm`,
//! `--pm-replicas=R`, ...), runs `srun --pm` steps under pmrun, and in
//! slurmd's prolog and epilog prepares and cleans every node's checkpoint
//! store. `cluster.sh` beside it starts a real Slurm for the tests.
//!
//! Modules: `options` (the table and checks), `wrap` (`srun --pm`),
//! `store` (the prolog's and epilog's file work), `sys` (all `unsafe`:
//! the SPANK API and file-system ids), `hooks` (the entry points Slurm
//! calls). Built without `spank.h` (see build.rs), the crate has no
//! entry points and Slurm cannot load it.

pub mod options;
pub mod store;
// Most of it serves only the entry points, absent from tests and from a
// build without spank.h.
#[cfg_attr(any(test, not(pm_spank)), allow(dead_code))]
mod sys;
pub mod wrap;

#[cfg(all(pm_spank, not(test)))]
mod hooks;
