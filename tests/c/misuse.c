/*
 * Calls pm the wrong way on purpose, one mistake per mode, and prints what pm
 * answered; the test checks that each mistake is a clear error, not a crash.
 *
 *     misuse init-before-mpi | step-before-init | duplicate-region | null-name | init-twice
 */
#include <mpi.h>
#include <pm.h>
#include <stdio.h>
#include <string.h>

static int report(const char *call, int rc) {
    printf("%s -> %d (%s): %s\n", call, rc, pm_strerror(rc), rc < 0 ? pm_last_error() : "");
    return rc;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "init-before-mpi")) {
        int ok = report("pm_init", pm_init(MPI_COMM_WORLD)) == PM_ERR_STATE;
        printf("%s\n", ok ? "as expected" : "UNEXPECTED");
        return ok ? 0 : 1;
    }
    MPI_Init(&argc, &argv);
    static double a[64], b[64];
    int status = 0;
    if (!strcmp(mode, "step-before-init")) {
        status = report("pm_step", pm_step()) == PM_ERR_STATE;
        status &= report("pm_region", pm_region("a", a, sizeof a)) == PM_ERR_STATE;
        status &= report("pm_finalize", pm_finalize()) == PM_ERR_STATE;
        status &= report("pm_set_total_steps", pm_set_total_steps(10)) == PM_ERR_STATE;
        status &= pm_restored_step() == -1;
    } else if (!strcmp(mode, "duplicate-region")) {
        report("pm_init", pm_init(MPI_COMM_WORLD));
        report("pm_region", pm_region("grid", a, sizeof a));
        status = report("pm_region", pm_region("grid", b, sizeof b)) == PM_ERR_ARGUMENT;
        status &= report("pm_finalize", pm_finalize()) == PM_OK;
    } else if (!strcmp(mode, "null-name")) {
        report("pm_init", pm_init(MPI_COMM_WORLD));
        status = report("pm_region", pm_region(NULL, a, sizeof a)) == PM_ERR_ARGUMENT;
        status &= report("pm_region", pm_region("bad/name", a, sizeof a)) == PM_ERR_ARGUMENT;
        status &= report("pm_region", pm_region("null-ptr", NULL, 8)) == PM_ERR_ARGUMENT;
        status &= report("pm_set_total_steps", pm_set_total_steps(-1)) == PM_ERR_ARGUMENT;
        status &= report("pm_set_total_steps", pm_set_total_steps(10)) == PM_OK;
        status &= report("pm_finalize", pm_finalize()) == PM_OK;
    } else if (!strcmp(mode, "init-twice")) {
        report("pm_init", pm_init(MPI_COMM_WORLD));
        status = report("pm_init", pm_init(MPI_COMM_WORLD)) == PM_ERR_STATE;
        status &= report("pm_finalize", pm_finalize()) == PM_OK;
    } else {
        fprintf(stderr, "unknown mode '%s'\n", mode);
    }
    printf("%s\n", status ? "as expected" : "UNEXPECTED");
    MPI_Finalize();
    return status ? 0 : 1;
}
