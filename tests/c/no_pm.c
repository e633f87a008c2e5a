/*
 * An MPI program that knows nothing of pm: STEPS steps of an exact integer
 * allreduce, PAUSE_MS each, and one line of result from rank 0. pmrun must
 * run it as mpirun would, and restart it from the beginning after a failure.
 *
 *     no_pm [STEPS] [PAUSE_MS]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long long steps = argc > 1 ? atoll(argv[1]) : 20;
    long pause_ms = argc > 2 ? atol(argv[2]) : 0;
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    unsigned long long x = (unsigned long long)rank + 1, total = 0;
    for (long long s = 0; s < steps; s++) {
        MPI_Allreduce(&x, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        x = x * 6364136223846793005ULL + total;
        if (pause_ms > 0) {
            struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (rank == 0) printf("no_pm: %d ranks, %lld steps, result %016llx\n", size, steps, total);
    MPI_Finalize();
    return 0;
}
