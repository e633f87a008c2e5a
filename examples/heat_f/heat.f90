! heat_f: the same 2-D Jacobi heat diffusion as examples/heat and
! examples/heat_c, in Fortran through `use pm`, computing bit for bit the
! same plate and printing the same checksum.
!
!     mpif90 $(pkg-config --variable=includedir pm)/pm.f90 heat.f90 \
!         $(pkg-config --cflags --libs pm) -o heat_f
!     mpirun -n 4 ./heat_f --rows 512 --cols 512 --steps 500
!
! (With pm installed, `mpif90 heat.f90 $(pkg-config --cflags --libs pm)`
! is enough.) Run the same command again after a crash and it resumes from
! the newest committed checkpoint.
program heat
    use, intrinsic :: iso_c_binding, only: c_double, c_int, c_long, c_loc
    use, intrinsic :: iso_fortran_env, only: int64, error_unit, output_unit
    use mpi
    use pm
    implicit none

    type, bind(C) :: timespec
        integer(c_long) :: tv_sec, tv_nsec
    end type timespec

    interface
        integer(c_int) function nanosleep(req, rem) bind(C, name="nanosleep")
            import :: c_int, timespec
            type(timespec), intent(in) :: req
            type(timespec), intent(out) :: rem
        end function nanosleep
    end interface

    integer(int64) :: rows = 512, cols = 512, steps = 500, pause_ms = 0
    integer(int64) :: row0, local, start, step, i, j, g, local_sum, total
    integer :: ierr, rank, nranks, up, down, rc
    logical :: stopped
    ! u(j, i) is column j of row i: the memory layout of heat_c's u[i * cols + j].
    ! Rows 0 and local + 1 are the halos.
    real(c_double), allocatable, target :: u(:, :)
    real(c_double), allocatable :: next(:, :)

    call parse_arguments()
    call MPI_Init(ierr)
    call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
    call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
    if (rows < nranks .or. cols < 3) then
        if (rank == 0) write (error_unit, '(a, i0, a)') 'heat_f: need at least ', nranks, ' rows and 3 columns'
        call MPI_Finalize(ierr)
        stop 2, quiet=.true.
    end if
    row0 = first_row(rank)
    local = first_row(rank + 1) - row0
    allocate (u(0:cols - 1, 0:local + 1), next(0:cols - 1, 0:local + 1))

    rc = pm_init(MPI_COMM_WORLD)
    if (rc /= PM_OK) call fail('pm_init', rc)
    rc = pm_region('u', c_loc(u), size(u, kind=int64) * storage_size(u) / 8)
    if (rc /= PM_OK) call fail('pm_region', rc)
    rc = pm_set_total_steps(steps)     ! pmrun weighs a move of ranks against the steps left
    if (rc /= PM_OK) call fail('pm_set_total_steps', rc)

    start = pm_restored_step()
    if (start >= 0) then
        if (rank == 0) write (*, '(a, i0)') 'heat: resumed from step ', start
    else
        start = 0
        do i = 0, local + 1
            g = row0 + i - 1
            do j = 0, cols - 1
                if (g < 0) then
                    u(j, i) = 100.0_c_double
                else if (g >= rows) then
                    u(j, i) = 0.0_c_double
                else
                    u(j, i) = real(mod(g * 31 + j * 17, 100_int64), c_double) / 100.0_c_double
                end if
            end do
        end do
        if (rank == 0) write (*, '(a, i0, a, i0, a, i0, a)') 'heat: starting a ', rows, 'x', cols, &
            ' plate on ', nranks, ' ranks'
    end if
    flush (output_unit)

    up = merge(rank - 1, MPI_PROC_NULL, rank > 0)
    down = merge(rank + 1, MPI_PROC_NULL, rank < nranks - 1)
    stopped = .false.
    do step = start, steps - 1
        ! Own first row up, bottom halo from below; own last row down, top halo from above.
        call MPI_Sendrecv(u(:, 1), int(cols), MPI_DOUBLE_PRECISION, up, 0, u(:, local + 1), int(cols), &
            MPI_DOUBLE_PRECISION, down, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
        call MPI_Sendrecv(u(:, local), int(cols), MPI_DOUBLE_PRECISION, down, 0, u(:, 0), int(cols), &
            MPI_DOUBLE_PRECISION, up, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
        do i = 1, local
            do j = 1, cols - 2
                ! The parentheses keep C's left-to-right order of the additions.
                next(j, i) = 0.25_c_double * (((u(j, i - 1) + u(j, i + 1)) + u(j - 1, i)) + u(j + 1, i))
            end do
        end do
        u(1:cols - 2, 1:local) = next(1:cols - 2, 1:local)
        if (pause_ms > 0) call pause()
        rc = pm_step()
        if (rc == PM_EXIT) then
            ! A checkpoint was committed and the job is asked to stop: the
            ! plate is not finished, so no checksum; run again to resume.
            if (rank == 0) write (*, '(a, i0, a)') 'heat: stopping at step ', step + 1, &
                ' after a checkpoint; run again to resume'
            stopped = .true.
            exit
        end if
        if (rc < 0) call fail('pm_step', rc)
    end do

    if (.not. stopped) then
        local_sum = 0
        do i = 1, local
            do j = 0, cols - 1
                local_sum = local_sum + cell_hash((row0 + i - 1) * cols + j, u(j, i))
            end do
        end do
        call MPI_Reduce(local_sum, total, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD, ierr)
        if (rank == 0) write (*, '(3a, i0, a)') 'heat: checksum ', hex(total), ' after ', steps, ' steps'
    end if

    ! After PM_EXIT too: pm_finalize keeps the checkpoint the job resumes from.
    rc = pm_finalize()
    if (rc /= PM_OK) call fail('pm_finalize', rc)
    call MPI_Finalize(ierr)

contains

    subroutine parse_arguments()
        character(len=64) :: key, value
        integer :: k, ios
        k = 1
        do while (k + 1 <= command_argument_count())
            call get_command_argument(k, key)
            call get_command_argument(k + 1, value)
            ios = 1
            select case (key)
            case ('--rows')
                read (value, *, iostat=ios) rows
            case ('--cols')
                read (value, *, iostat=ios) cols
            case ('--steps')
                read (value, *, iostat=ios) steps
            case ('--pause-ms')
                read (value, *, iostat=ios) pause_ms
            end select
            if (ios /= 0) then
                write (error_unit, '(a)') 'usage: heat_f [--rows R] [--cols C] [--steps N] [--pause-ms M]'
                stop 2, quiet=.true.
            end if
            k = k + 2
        end do
    end subroutine parse_arguments

    integer(int64) function first_row(r)
        integer, intent(in) :: r
        first_row = rows * r / nranks
    end function first_row

    ! The hash of one cell, as heat_c computes it with uint64_t: gfortran's
    ! integer(int64) product wraps modulo 2**64 like C's unsigned one (two's
    ! complement; overflow is not trapped), and ishftc rotates left.
    integer(int64) function cell_hash(index, x)
        integer(int64), intent(in) :: index
        real(c_double), intent(in) :: x
        cell_hash = ishftc(transfer(x, 0_int64) * (2 * index + 1), int(mod(index, 61_int64)))
    end function cell_hash

    ! Sixteen lowercase hexadecimal digits of the 64 bits of v, as %016llx.
    function hex(v) result(s)
        integer(int64), intent(in) :: v
        character(len=16) :: s
        integer :: k
        write (s, '(z16.16)') v
        do k = 1, len(s)
            if (s(k:k) >= 'A' .and. s(k:k) <= 'F') s(k:k) = achar(iachar(s(k:k)) + 32)
        end do
    end function hex

    subroutine pause()
        type(timespec) :: req, rem
        req = timespec(pause_ms / 1000, mod(pause_ms, 1000_int64) * 1000000)
        rc = nanosleep(req, rem)
    end subroutine pause

    subroutine fail(what, code)
        character(len=*), intent(in) :: what
        integer, intent(in) :: code
        write (error_unit, '(a, i0, 6a)') 'heat_f: rank ', rank, ': ', what, ': ', pm_last_error(), &
            ' (', pm_strerror(code) // ')'
        call MPI_Abort(MPI_COMM_WORLD, 1, ierr)
    end subroutine fail

end program heat
