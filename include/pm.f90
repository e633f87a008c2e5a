! pm.f90 - the pmrun rank runtime for Fortran: `use pm`.
!
! ISO_C_BINDING interfaces to libpm.so for every function of pm.h (which
! documents each), Fortran strings where C has char pointers, and the PM_*
! constants.
!
!     use mpi                            ! or: use mpi_f08
!     use pm
!     use, intrinsic :: iso_c_binding, only: c_double, c_loc
!     use, intrinsic :: iso_fortran_env, only: int64
!     real(c_double), allocatable, target :: grid(:, :)
!     ...
!     call MPI_Init(ierr)
!     rc = pm_init(MPI_COMM_WORLD)       ! mpi_f08: pm_init(MPI_COMM_WORLD%MPI_VAL)
!     if (rc /= PM_OK) error stop pm_last_error()
!     rc = pm_region("grid", c_loc(grid), size(grid, kind=int64) * storage_size(grid) / 8)
!                                        ! grid is restored here on a restart
!     start = max(pm_restored_step(), 0_int64)             ! -1 on a fresh start
!     stopped = .false.
!     do step = start, steps - 1
!         call compute(grid)
!         rc = pm_step()
!         if (rc == PM_EXIT) then        ! checkpointed and asked to stop
!             stopped = .true.
!             exit
!         end if
!         if (rc < 0) error stop pm_last_error()
!     end do
!     if (.not. stopped) call print_result(grid)   ! a stopped run's result is partial
!     rc = pm_finalize()     ! done: checkpoints removed; stopped: kept for the resume
!     call MPI_Finalize(ierr)
!
! Build with libpm installed (`make install`: pm.mod next to pm.h, the
! compiled module in libpm_fortran.a, named by pm.pc):
!     mpif90 app.f90 $(pkg-config --cflags --libs pm) -o app
! or compile this file with the program (the build tree, or another compiler
! than the one pm.mod was made with):
!     mpif90 $(pkg-config --variable=includedir pm)/pm.f90 app.f90 \
!         $(pkg-config --cflags --libs pm) -o app
! libpm.so must come before the MPI libraries on the link line (mpif90 puts
! them last) so that pm can time the program's blocking MPI calls.
module pm
    use, intrinsic :: iso_c_binding, only: c_char, c_double, c_int, c_int64_t, &
        c_long_long, c_null_char, c_ptr, c_size_t, c_associated, c_f_pointer
    use, intrinsic :: iso_fortran_env, only: int32, int64
    implicit none
    private

    public :: pm_init, pm_init_f, pm_region, pm_restored_step, pm_step, pm_stats, &
        pm_set_total_steps, pm_finalize, pm_strerror, pm_last_error, pm_stats_t

    ! Return codes (pm.h).
    integer(c_int), parameter, public :: PM_OK = 0           ! success; also pm_step's "continue"
    integer(c_int), parameter, public :: PM_CONTINUE = 0     ! pm_step: go on with the next step
    integer(c_int), parameter, public :: PM_EXIT = 1         ! pm_step: checkpoint taken, stop
    integer(c_int), parameter, public :: PM_ERR_STATE = -1   ! called in the wrong order
    integer(c_int), parameter, public :: PM_ERR_ARGUMENT = -2 ! invalid argument
    integer(c_int), parameter, public :: PM_ERR_CONFIG = -3  ! invalid PM_* environment variable
    integer(c_int), parameter, public :: PM_ERR_STORE = -4   ! the checkpoint store cannot be used
    integer(c_int), parameter, public :: PM_ERR_MISMATCH = -5 ! checkpoint does not match this run
    integer(c_int), parameter, public :: PM_ERR_CORRUPT = -6 ! checkpoint is damaged
    integer(c_int), parameter, public :: PM_ERR_PEER = -7    ! another rank failed
    integer(c_int), parameter, public :: PM_ERR_MPI = -8     ! an MPI call failed
    integer(c_int), parameter, public :: PM_ERR_INTERNAL = -9 ! a bug in pm

    ! Per-rank step timing (pm_stats_t).
    type, bind(C) :: pm_stats_t
        integer(c_int64_t) :: steps        ! steps measured (uint64_t in C)
        real(c_double) :: compute_mean_s   ! moving mean of compute seconds per step
        real(c_double) :: compute_var_s2   ! moving variance of the same
        real(c_double) :: wall_mean_s      ! moving mean of wall seconds per step
        real(c_double) :: mpi_s            ! total seconds blocked in MPI
        real(c_double) :: cpu_s            ! CPU seconds of the process
    end type pm_stats_t

    ! pm_init(comm): comm is a Fortran communicator handle, MPI_COMM_WORLD
    ! of `use mpi` or `include 'mpif.h'`; with `use mpi_f08` pass the
    ! handle's integer, comm%MPI_VAL. Collective. Returns PM_OK or an error.
    interface pm_init
        integer(c_int) function pm_init_f(comm) bind(C, name="pm_init_f")
            import :: c_int
            integer(c_int), intent(in) :: comm
        end function pm_init_f
    end interface pm_init

    ! pm_region(name, ptr, bytes): register `bytes` bytes at `ptr` (c_loc of a
    ! contiguous array with the target attribute) under `name`; bytes is an
    ! integer of kind int32 or int64.
    interface pm_region
        module procedure pm_region_i4, pm_region_i8
    end interface pm_region

    interface
        integer(c_int64_t) function pm_restored_step() bind(C, name="pm_restored_step")
            import :: c_int64_t
        end function pm_restored_step

        integer(c_int) function pm_step() bind(C, name="pm_step")
            import :: c_int
        end function pm_step

        ! pm_set_total_steps(steps): the job's steps in all (an integer of kind
        ! int64: 100_int64), so that pmrun can judge whether moving ranks pays
        ! off before the job ends. Local; call it on every rank after pm_init.
        integer(c_int) function pm_set_total_steps(steps) bind(C, name="pm_set_total_steps")
            import :: c_int, c_long_long
            integer(c_long_long), value :: steps
        end function pm_set_total_steps

        integer(c_int) function pm_stats(out) bind(C, name="pm_stats")
            import :: c_int, pm_stats_t
            type(pm_stats_t), intent(out) :: out
        end function pm_stats

        integer(c_int) function pm_finalize() bind(C, name="pm_finalize")
            import :: c_int
        end function pm_finalize

        integer(c_int) function pm_region_c(name, ptr, bytes) bind(C, name="pm_region")
            import :: c_char, c_int, c_ptr, c_size_t
            character(kind=c_char), intent(in) :: name(*)
            type(c_ptr), value :: ptr
            integer(c_size_t), value :: bytes
        end function pm_region_c

        type(c_ptr) function pm_strerror_c(code) bind(C, name="pm_strerror")
            import :: c_int, c_ptr
            integer(c_int), value :: code
        end function pm_strerror_c

        type(c_ptr) function pm_last_error_c() bind(C, name="pm_last_error")
            import :: c_ptr
        end function pm_last_error_c

        integer(c_size_t) function c_strlen(s) bind(C, name="strlen")
            import :: c_ptr, c_size_t
            type(c_ptr), value :: s
        end function c_strlen
    end interface

contains

    integer(c_int) function pm_region_i8(name, ptr, bytes) result(rc)
        character(len=*), intent(in) :: name
        type(c_ptr), intent(in) :: ptr
        integer(int64), intent(in) :: bytes
        rc = pm_region_c(name // c_null_char, ptr, int(bytes, c_size_t))
    end function pm_region_i8

    integer(c_int) function pm_region_i4(name, ptr, bytes) result(rc)
        character(len=*), intent(in) :: name
        type(c_ptr), intent(in) :: ptr
        integer(int32), intent(in) :: bytes
        rc = pm_region_c(name // c_null_char, ptr, int(bytes, c_size_t))
    end function pm_region_i4

    ! A static description of an error code.
    function pm_strerror(code) result(msg)
        integer, intent(in) :: code
        character(len=:), allocatable :: msg
        msg = fortran_string(pm_strerror_c(int(code, c_int)))
    end function pm_strerror

    ! The full message of this thread's last failed pm call ("" if none).
    function pm_last_error() result(msg)
        character(len=:), allocatable :: msg
        msg = fortran_string(pm_last_error_c())
    end function pm_last_error

    ! A copy of the NUL-terminated C string at p ("" for a null pointer).
    function fortran_string(p) result(s)
        type(c_ptr), intent(in) :: p
        character(len=:), allocatable :: s
        character(kind=c_char), pointer :: chars(:)
        integer(c_size_t) :: i, n
        if (.not. c_associated(p)) then
            s = ""
            return
        end if
        n = c_strlen(p)
        call c_f_pointer(p, chars, [n])
        allocate (character(len=n) :: s)
        do i = 1, n
            s(i:i) = chars(i)
        end do
    end function fortran_string

end module pm
