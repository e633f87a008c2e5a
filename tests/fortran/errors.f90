! pm's error messages reach Fortran as Fortran strings: pm_step before
! pm_init, then a bad region name. Each line is `<call> <code> [<strerror>]
! [<last error>]` so that the test sees exactly where each string ends.
program errors
    use, intrinsic :: iso_c_binding, only: c_double, c_loc
    use mpi
    use pm
    implicit none

    real(c_double), target :: x(4)
    integer :: ierr, rc

    call MPI_Init(ierr)
    write (*, '(3a)') 'before any call [', pm_last_error(), ']'
    rc = pm_step()
    call report('pm_step', rc)
    if (pm_init(MPI_COMM_WORLD) /= PM_OK) error stop pm_last_error()
    rc = pm_region('not a name!', c_loc(x), 32)
    call report('pm_region', rc)
    call report('unknown', 42)
    if (pm_finalize() /= PM_OK) error stop pm_last_error()
    call MPI_Finalize(ierr)

contains

    subroutine report(call, code)
        character(len=*), intent(in) :: call
        integer, intent(in) :: code
        write (*, '(2a, i0, 5a)') call, ' ', code, ' [', pm_strerror(code), '] [', pm_last_error(), ']'
    end subroutine report

end program errors
