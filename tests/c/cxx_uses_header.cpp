// pm.h from C++: the header compiles as C++ and links against libpm.so.
#include <mpi.h>
#include <pm.h>
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    std::vector<double> state(1000, 1.5);
    int ok = pm_init(MPI_COMM_WORLD) == PM_OK;
    ok &= pm_region("state", state.data(), state.size() * sizeof(double)) == PM_OK;
    for (int step = 0; step < 3; step++) ok &= pm_step() == PM_CONTINUE;
    ok &= std::strcmp(pm_strerror(PM_ERR_MISMATCH), "checkpoint does not match this run (ranks or regions)") == 0;
    ok &= pm_finalize() == PM_OK;
    std::printf("%s\n", ok ? "c++ ok" : "c++ FAILED");
    MPI_Finalize();
    return ok ? 0 : 1;
}
