/*
 * pm.h - the pmrun rank runtime for C, C++ and Fortran (through ISO_C_BINDING).
 *
 * An MPI application keeps its state in registered regions and calls
 * pm_step() once per time step. pm takes coordinated checkpoints of the
 * regions into node-local storage and, when the same command is run again
 * after a crash, restores the newest checkpoint that every rank committed.
 *
 *     MPI_Init(&argc, &argv);
 *     if (pm_init(MPI_COMM_WORLD) != PM_OK) abort_with(pm_last_error());
 *     pm_region("grid", grid, bytes);          // restored here on a restart
 *     long long start = pm_restored_step();    // -1 on a fresh start
 *     int stopped = 0;
 *     for (long long s = start < 0 ? 0 : start; s < steps && !stopped; s++) {
 *         compute(grid);
 *         int rc = pm_step();
 *         if (rc == PM_EXIT) stopped = 1;      // checkpointed and asked to stop
 *         else if (rc < 0) abort_with(pm_last_error());
 *     }
 *     if (!stopped) print_result(grid);        // a stopped run's result is partial
 *     pm_finalize();     // done: checkpoints removed; stopped: kept for the resume
 *     MPI_Finalize();
 *     return 0;
 *
 * On PM_EXIT a program stops stepping, skips its final output, calls
 * pm_finalize() and MPI_Finalize() and exits with status 0: the checkpoint
 * is kept, and pmrun (or the same command run again) resumes the job there.
 *
 * Build:  mpicc app.c $(pkg-config --cflags --libs pm) -o app
 * (pm must come before the MPI library on the link line, as mpicc arranges,
 * so that pm can time blocking MPI calls through the PMPI interface.)
 *
 * Configuration comes from the environment: PM_STORE (store directory,
 * default /dev/shm/pmrun-<uid>), PM_JOB (job id; default derived from the
 * program, its arguments and the working directory), PM_INTERVAL (seconds
 * between checkpoints, default 60) or PM_EVERY (steps), PM_KEEP (committed
 * epochs kept, default 2), PM_SIGNALS=0 (no SIGUSR1/SIGUSR2 handlers),
 * PM_LOAD_PERIOD (under pmrun: seconds between a rank's load reports to its
 * node agent, at least; default 1), PM_ASYNC=1 (asynchronous checkpoints:
 * pm_step is blocked only while the state is copied into the store).
 * SIGUSR1 asks for a checkpoint and PM_EXIT; SIGUSR2 for a checkpoint.
 *
 * Errors: functions return PM_OK (0) or a negative PM_ERR_* code;
 * pm_strerror() names the code and pm_last_error() gives the full message of
 * the calling thread's last failure. pm_init, pm_step and pm_finalize are
 * collective and fail on all ranks together; pm_region fails on one rank
 * only, so a rank that gets an error from it should call MPI_Abort.
 *
 * Fortran: `use pm` (include/pm.f90; `make install` also installs its
 * compiled pm.mod and libpm_fortran.a) declares every function here with
 * ISO_C_BINDING, takes and returns Fortran strings and has the PM_*
 * constants, so no interface blocks need to be written by hand:
 *     rc = pm_init(MPI_COMM_WORLD)     ! pm_init_f; mpi_f08: MPI_COMM_WORLD%MPI_VAL
 *     rc = pm_region("grid", c_loc(grid), size(grid, kind=int64) * 8)  ! grid: target
 *     if (rc /= PM_OK) error stop pm_last_error()
 * Build:  mpif90 app.f90 $(pkg-config --cflags --libs pm) -o app
 * (in the build tree, compile include/pm.f90 first on the same line). The
 * MPI calls of Fortran programs are timed too (use mpi, mpif.h, mpi_f08).
 */
#ifndef PM_H
#define PM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PM_OK 0            /* success; also pm_step's "continue" */
#define PM_CONTINUE 0      /* pm_step: go on with the next step */
#define PM_EXIT 1          /* pm_step: a checkpoint was taken and the job is asked to stop */
#define PM_ERR_STATE (-1)     /* called in the wrong order (e.g. pm_step before pm_init) */
#define PM_ERR_ARGUMENT (-2)  /* invalid argument (NULL, bad or duplicate region name) */
#define PM_ERR_CONFIG (-3)    /* invalid PM_* environment variable */
#define PM_ERR_STORE (-4)     /* the checkpoint store cannot be used (permissions, space) */
#define PM_ERR_MISMATCH (-5)  /* checkpoint does not match this run: rank count, region set or size */
#define PM_ERR_CORRUPT (-6)   /* checkpoint is damaged */
#define PM_ERR_PEER (-7)      /* another rank failed; its message says why */
#define PM_ERR_MPI (-8)       /* an MPI call failed */
#define PM_ERR_INTERNAL (-9)  /* a bug in pm */

/* Per-rank step timing, for load balancing. */
typedef struct pm_stats {
    uint64_t steps;         /* steps measured by this process */
    double compute_mean_s;  /* moving mean of compute seconds per step (wall minus MPI wait) */
    double compute_var_s2;  /* moving variance of the same */
    double wall_mean_s;     /* moving mean of wall seconds per step */
    double mpi_s;           /* total seconds blocked in MPI */
    double cpu_s;           /* CPU seconds of the process */
} pm_stats_t;

/* Initialise pm on (a duplicate of) comm: read the PM_* configuration, open
 * this rank's store and, if the job has a committed checkpoint, prepare to
 * restore it. Collective over comm. Call once, after MPI_Init. */
int pm_init(MPI_Comm comm);

/* pm_init for Fortran: comm points to a Fortran communicator handle. */
int pm_init_f(const int *comm);

/* Register `bytes` bytes at `ptr` under `name` (1-128 characters of
 * A-Z a-z 0-9 . _ -, unique). On a restart the memory is filled with the
 * checkpointed bytes here; a size different from the checkpoint's is
 * PM_ERR_MISMATCH. The memory must stay valid until pm_finalize and must not
 * change while pm_step runs. Register every region before the first pm_step. */
int pm_region(const char *name, void *ptr, size_t bytes);

/* The step to resume at after a restart (steps completed when the
 * checkpoint was taken), or -1 on a fresh start or before pm_init. */
int64_t pm_restored_step(void);

/* End a time step: call on every rank, once per step, where the registered
 * state is consistent. May take a coordinated checkpoint. Returns
 * PM_CONTINUE, PM_EXIT (a checkpoint was taken and the job is asked to stop:
 * see the example above; every later call returns PM_EXIT again), or a
 * negative error. Collective. */
int pm_step(void);

/* Declare how many steps the job has in all, counting those before a
 * restart (the loop's end, not what is left of it). Under pmrun it goes
 * with the rank's load reports: pmrun uses it to judge whether moving ranks
 * to balance the load pays off before the job ends (without it, pmrun
 * guesses the remaining steps). Without pmrun it has no effect. Local, not
 * collective: call it on every rank, after pm_init, e.g. once before the
 * loop. Returns PM_OK, PM_ERR_STATE before pm_init, PM_ERR_ARGUMENT for a
 * negative count. */
int pm_set_total_steps(long long steps);

/* Fill *out with this rank's step timing. */
int pm_stats(pm_stats_t *out);

/* Release pm; collective, call before MPI_Finalize. After PM_EXIT the job
 * stopped at a checkpoint, which is kept for the resume (pmrun learns that
 * the rank stopped, not finished). Otherwise the job is done: its
 * checkpoints are removed, since there is nothing left to resume. */
int pm_finalize(void);

/* A static description of an error code. */
const char *pm_strerror(int code);

/* The full message of the calling thread's last failed pm call ("" if none).
 * Valid until the next failing pm call on this thread. */
const char *pm_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* PM_H */
