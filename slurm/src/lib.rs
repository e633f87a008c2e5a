//! `pm-slurm`: the Slurm SPANK plugin that gives `srun` and `sbatch` pmrun's
//! options, and the scripts that start a real Slurm (munged, slurmctld,
//! several slurmd) for the integration tests. Not built yet: this crate is the
//! place it will live.
