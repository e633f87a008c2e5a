! Rank 1 sleeps 2 s before MPI_Barrier, so rank 0 waits 2 s in it; then one
! pm_step. Prints each rank's pm_stats so that the test can check that
! libpm.so times the MPI calls of Fortran programs (rank 0: mpi_s about 2,
! compute_mean_s about 0). Built with `use mpi`, with -DPM_MPIFH with
! `include 'mpif.h'`, or with -DPM_F08 with `use mpi_f08`.
program barrier_wait
    use, intrinsic :: iso_c_binding, only: c_int
#if defined(PM_F08)
    use mpi_f08
#elif !defined(PM_MPIFH)
    use mpi
#endif
    use pm
    implicit none
#ifdef PM_MPIFH
    include 'mpif.h'
#endif

    interface
        integer(c_int) function sleep(seconds) bind(C, name="sleep")
            import :: c_int
            integer(c_int), value :: seconds
        end function sleep
    end interface

    type(pm_stats_t) :: s
    integer :: ierr, rank, rc

    call MPI_Init(ierr)
    call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
#ifdef PM_F08
    rc = pm_init(MPI_COMM_WORLD%MPI_VAL)
#else
    rc = pm_init(MPI_COMM_WORLD)
#endif
    if (rc /= PM_OK) error stop pm_last_error()
    if (rank == 1) rc = sleep(2_c_int)
    call MPI_Barrier(MPI_COMM_WORLD, ierr)
    if (pm_step() /= PM_CONTINUE) error stop pm_last_error()
    if (pm_stats(s) /= PM_OK) error stop pm_last_error()
    write (*, '(a, i0, a, i0, 3(a, f8.3))') 'rank ', rank, ' steps ', s%steps, ' mpi_s ', s%mpi_s, &
        ' compute_mean_s ', s%compute_mean_s, ' wall_mean_s ', s%wall_mean_s
    if (pm_finalize() /= PM_OK) error stop pm_last_error()
    call MPI_Finalize(ierr)
end program barrier_wait
