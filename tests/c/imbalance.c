/*
 * Rank 0 computes 30 ms per step, the others 3 ms; every step ends with a
 * ring exchange and an allreduce. Prints each rank's pm_stats so the test can
 * check that libpm.so, linked as pkg-config says, times MPI waits (PMPI).
 */
#include <mpi.h>
#include <pm.h>
#include <stdio.h>
#include <time.h>

static void spin_ms(double ms) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1e3 + (t.tv_nsec - t0.tv_nsec) / 1e6 < ms);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (pm_init(MPI_COMM_WORLD) != PM_OK) {
        fprintf(stderr, "pm_init: %s\n", pm_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double out[256] = {0}, in[256], sum;
    for (int step = 0; step < 40; step++) {
        spin_ms(rank == 0 ? 30.0 : 3.0);
        MPI_Sendrecv(out, 256, MPI_DOUBLE, (rank + 1) % size, 0, in, 256, MPI_DOUBLE, (rank + size - 1) % size, 0,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Allreduce(&in[0], &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (pm_step() < 0) MPI_Abort(MPI_COMM_WORLD, 1);
    }
    pm_stats_t s;
    pm_stats(&s);
    printf("rank %d compute_ms %.2f wall_ms %.2f mpi_ms %.2f\n", rank, s.compute_mean_s * 1e3, s.wall_mean_s * 1e3,
           s.mpi_s * 1e3 / (double)s.steps);
    pm_finalize();
    MPI_Finalize();
    return 0;
}
