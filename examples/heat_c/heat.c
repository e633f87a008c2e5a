/*
 * heat_c: the same 2-D Jacobi heat diffusion as examples/heat, in C through
 * pm.h, computing bit for bit the same plate and printing the same checksum.
 *
 *     mpicc heat.c $(pkg-config --cflags --libs pm) -o heat_c
 *     mpirun -n 4 ./heat_c --rows 512 --cols 512 --steps 500
 *
 * Run the same command again after a crash and it resumes from the newest
 * committed checkpoint.
 */
#include <mpi.h>
#include <pm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void fail(int rank, const char *what, int code) {
    fprintf(stderr, "heat_c: rank %d: %s: %s (%s)\n", rank, what, pm_last_error(), pm_strerror(code));
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static size_t first_row(size_t rows, int size, int rank) { return rows * (size_t)rank / (size_t)size; }

static double initial(size_t global_row, size_t col) {
    return (double)((global_row * 31 + col * 17) % 100) / 100.0;
}

static uint64_t cell_hash(uint64_t index, double x) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    uint64_t h = bits * (2 * index + 1);
    unsigned r = (unsigned)(index % 61);
    return r ? (h << r) | (h >> (64 - r)) : h;
}

/* Own row `send` to `to`, halo row `recv` from `from` (MPI_PROC_NULL at the edges). */
static void shift(double *send, double *recv, size_t cols, int to, int from) {
    MPI_Sendrecv(send, (int)cols, MPI_DOUBLE, to, 0, recv, (int)cols, MPI_DOUBLE, from, 0,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}

int main(int argc, char **argv) {
    size_t rows = 512, cols = 512;
    long long steps = 500, pause_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows")) rows = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--cols")) cols = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--steps")) steps = strtoll(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--pause-ms")) pause_ms = strtoll(argv[i + 1], NULL, 10);
        else {
            fprintf(stderr, "usage: heat_c [--rows R] [--cols C] [--steps N] [--pause-ms M]\n");
            return 2;
        }
    }
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (rows < (size_t)size || cols < 3) {
        if (rank == 0) fprintf(stderr, "heat_c: need at least %d rows and 3 columns\n", size);
        MPI_Finalize();
        return 2;
    }
    size_t row0 = first_row(rows, size, rank);
    size_t local = first_row(rows, size, rank + 1) - row0;
    size_t cells = (local + 2) * cols;
    double *u = malloc(cells * sizeof *u), *next = malloc(cells * sizeof *next);

    int rc = pm_init(MPI_COMM_WORLD);
    if (rc != PM_OK) fail(rank, "pm_init", rc);
    rc = pm_region("u", u, cells * sizeof *u);
    if (rc != PM_OK) fail(rank, "pm_region", rc);
    rc = pm_set_total_steps(steps); /* pmrun weighs a move of ranks against the steps left */
    if (rc != PM_OK) fail(rank, "pm_set_total_steps", rc);

    long long start = pm_restored_step();
    if (start >= 0) {
        if (rank == 0) printf("heat: resumed from step %lld\n", start);
    } else {
        start = 0;
        for (size_t i = 0; i < local + 2; i++)
            for (size_t j = 0; j < cols; j++) {
                long long g = (long long)(row0 + i) - 1;
                u[i * cols + j] = g < 0 ? 100.0 : (size_t)g >= rows ? 0.0 : initial((size_t)g, j);
            }
        if (rank == 0) printf("heat: starting a %zux%zu plate on %d ranks\n", rows, cols, size);
    }
    fflush(stdout);

    int stopped = 0;
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL;
    int down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;
    for (long long step = start; step < steps && !stopped; step++) {
        shift(&u[cols], &u[(local + 1) * cols], cols, up, down);
        shift(&u[local * cols], &u[0], cols, down, up);
        for (size_t i = 1; i <= local; i++)
            for (size_t j = 1; j < cols - 1; j++) {
                size_t c = i * cols + j;
                next[c] = 0.25 * (u[c - cols] + u[c + cols] + u[c - 1] + u[c + 1]);
            }
        for (size_t i = 1; i <= local; i++)
            memcpy(&u[i * cols + 1], &next[i * cols + 1], (cols - 2) * sizeof *u);
        if (pause_ms > 0) {
            struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        rc = pm_step();
        if (rc == PM_EXIT) {
            /* Checkpointed and asked to stop: no (partial) checksum. */
            stopped = 1;
            if (rank == 0) printf("heat: stopping at step %lld after a checkpoint; run again to resume\n", step + 1);
        } else if (rc < 0) {
            fail(rank, "pm_step", rc);
        }
    }

    if (!stopped) {
        uint64_t sum = 0, total = 0;
        for (size_t i = 1; i <= local; i++)
            for (size_t j = 0; j < cols; j++)
                sum += cell_hash((uint64_t)((row0 + i - 1) * cols + j), u[i * cols + j]);
        MPI_Reduce(&sum, &total, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rank == 0) printf("heat: checksum %016llx after %lld steps\n", (unsigned long long)total, steps);
    }

    rc = pm_finalize(); /* after PM_EXIT it keeps the checkpoint for the resume */
    if (rc != PM_OK) fail(rank, "pm_finalize", rc);
    free(u);
    free(next);
    MPI_Finalize();
    return 0;
}
