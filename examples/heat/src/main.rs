//! `heat`: 2-D Jacobi heat diffusion on a rows × cols plate, split into row
//! blocks over the MPI ranks, with halo exchange every step. The plate's
//! top edge is held at 100 degrees, the other edges at their initial values.
//! It prints a checksum of the final plate that depends on every bit of
//! every cell, so a run that was killed and resumed can be compared with an
//! undisturbed one. `examples/heat_c` computes exactly the same in C.
//!
//!     mpirun -n 4 heat --rows 512 --cols 512 --steps 500
//!
//! State lives in one pm region; run the same command again after a crash
//! and it resumes from the newest committed checkpoint (PM_EVERY / PM_INTERVAL
//! choose how often those are taken).

use clap::Parser;
use mpi::point_to_point::send_receive_into;
use mpi::traits::*;
use pm::{Action, PmError, Runtime};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "2-D Jacobi heat diffusion over MPI, checkpointed with pm")]
struct Args {
    /// Rows of the plate (split over the ranks).
    #[arg(long, default_value_t = 512)]
    rows: usize,
    /// Columns of the plate.
    #[arg(long, default_value_t = 512)]
    cols: usize,
    /// Time steps to run.
    #[arg(long, default_value_t = 500)]
    steps: u64,
    /// Sleep this long in every step, to watch a run (demos, tests).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Run without the pm runtime: no checkpoints (the baseline of `pmbench overhead`).
    #[arg(long)]
    no_pm: bool,
    /// Print the time of the step loop and each rank's checkpoint blocking time.
    #[arg(long)]
    report: bool,
}

fn main() {
    let args = Args::parse();
    let universe = mpi::initialize().expect("MPI is initialised once");
    let world = universe.world();
    if let Err(e) = run(&args, &world) {
        eprintln!("heat: rank {}: {e}", world.rank());
        world.abort(1);
    }
}

/// The first global row of `rank`'s block.
fn first_row(rows: usize, size: usize, rank: usize) -> usize {
    rows * rank / size
}

fn initial(global_row: usize, col: usize) -> f64 {
    ((global_row * 31 + col * 17) % 100) as f64 / 100.0
}

fn run(args: &Args, world: &impl Communicator) -> Result<(), PmError> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    if args.rows < size || args.cols < 3 {
        return Err(PmError::InvalidArgument(format!(
            "need at least {size} rows (one per rank) and 3 columns"
        )));
    }
    let cols = args.cols;
    let row0 = first_row(args.rows, size, rank);
    let local = first_row(args.rows, size, rank + 1) - row0;

    let mut rt = if args.no_pm {
        None
    } else {
        Some(Runtime::init(world)?)
    };
    if let Some(rt) = rt.as_mut() {
        // pmrun weighs a move of ranks against the steps left.
        rt.set_total_steps(args.steps);
    }
    // Local rows 1..=local are this rank's; rows 0 and local+1 are halos
    // (or, at the plate's edges, the fixed boundary).
    let cells = (local + 2) * cols;
    let mut u = match rt.as_mut() {
        Some(rt) => Plate::Pm(rt.region::<f64>("u", cells)?),
        // The same page-aligned, pre-faulted memory pm gives a region, so
        // that the baseline differs from the pm run only by pm.
        None => Plate::Plain(
            pm::RegionBuf::new(cells * 8).map_err(|e| PmError::InvalidArgument(e.to_string()))?,
        ),
    };
    let start = match rt.as_ref().and_then(Runtime::restored_step) {
        Some(step) => {
            if rank == 0 {
                println!("heat: resumed from step {step}");
            }
            step
        }
        None => {
            u.with_mut(|u| {
                for i in 0..local + 2 {
                    for j in 0..cols {
                        // Row -1 is the hot edge; row `rows` the cold one.
                        let g = (row0 + i) as isize - 1;
                        u[i * cols + j] = if g < 0 {
                            100.0
                        } else if g as usize >= args.rows {
                            0.0
                        } else {
                            initial(g as usize, j)
                        };
                    }
                }
            });
            if rank == 0 {
                println!(
                    "heat: starting a {}x{} plate on {size} ranks",
                    args.rows, cols
                );
            }
            0
        }
    };

    let mut next = vec![0.0f64; cells];
    let (mut blocked, mut seen_epoch) = (Vec::<f64>::new(), 0);
    let started = Instant::now();
    let mut stopped = false;
    for step in start..args.steps {
        // The step's whole compute in one closure: the hot loop runs on a
        // plain slice, and the borrow ends before `step()` checkpoints `u`.
        u.with_mut(|u| {
            exchange_halos(world, u, local, cols);
            for i in 1..=local {
                for j in 1..cols - 1 {
                    let c = i * cols + j;
                    next[c] = 0.25 * (u[c - cols] + u[c + cols] + u[c - 1] + u[c + 1]);
                }
            }
            for i in 1..=local {
                let row = i * cols + 1..(i + 1) * cols - 1;
                u[row.clone()].copy_from_slice(&next[row]);
            }
        });
        if args.pause_ms > 0 {
            std::thread::sleep(Duration::from_millis(args.pause_ms));
        }
        let Some(rt) = rt.as_mut() else { continue };
        let action = rt.step()?;
        if let Some(c) = rt.last_checkpoint().filter(|c| c.epoch != seen_epoch) {
            blocked.push(c.blocked.as_secs_f64());
            seen_epoch = c.epoch;
        }
        if action == Action::Exit {
            if rank == 0 {
                println!(
                    "heat: stopping at step {} after a checkpoint; run again to resume",
                    step + 1
                );
            }
            stopped = true;
            break;
        }
    }
    if stopped {
        // Stopped at a checkpoint: the checksum would be partial; finalize
        // keeps the checkpoint for the resume.
        return rt.map_or(Ok(()), Runtime::finalize);
    }
    if args.report {
        // The last asynchronous checkpoint may still be publishing.
        if let Some(rt) = rt.as_mut() {
            rt.wait_for_checkpoint()?;
            if let Some(c) = rt.last_checkpoint().filter(|c| c.epoch != seen_epoch) {
                blocked.push(c.blocked.as_secs_f64());
            }
        }
        world.barrier();
        if rank == 0 {
            println!(
                "heat: step loop took {:.6} s",
                started.elapsed().as_secs_f64()
            );
        }
        let each: Vec<String> = blocked.iter().map(|b| format!("{b:.6}")).collect();
        println!(
            "heat: rank {rank} checkpoints blocked s: {}",
            each.join(" ")
        );
        println!(
            "heat: rank {rank} took {} checkpoints blocking {:.6} s in all (median {:.6} s), {} bytes of state",
            blocked.len(),
            blocked.iter().sum::<f64>(),
            median(&mut blocked),
            cells * 8
        );
    }

    let sum = u.with_mut(|u| {
        let mut sum = 0u64;
        for i in 1..=local {
            for j in 0..cols {
                sum = sum.wrapping_add(cell_hash((row0 + i - 1) * cols + j, u[i * cols + j]));
            }
        }
        sum
    });
    let root = world.process_at_rank(0);
    if rank == 0 {
        let mut total = 0u64;
        root.reduce_into_root(&sum, &mut total, mpi::collective::SystemOperation::sum());
        println!("heat: checksum {total:016x} after {} steps", args.steps);
    } else {
        root.reduce_into(&sum, mpi::collective::SystemOperation::sum());
    }
    rt.map_or(Ok(()), Runtime::finalize)
}

/// The plate's memory: a pm region, or for the `--no-pm` baseline the same
/// kind of buffer without pm.
enum Plate {
    Pm(pm::Region<f64>),
    Plain(pm::RegionBuf),
}

impl Plate {
    fn with_mut<R>(&mut self, f: impl FnOnce(&mut [f64]) -> R) -> R {
        match self {
            Plate::Pm(region) => region.with_mut(f),
            Plate::Plain(buf) => f(bytemuck::cast_slice_mut(buf)),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Order-sensitive hash of one cell: every bit of every cell counts.
fn cell_hash(index: usize, x: f64) -> u64 {
    x.to_bits()
        .wrapping_mul(2 * index as u64 + 1)
        .rotate_left((index % 61) as u32)
}

/// Sends the first and last own rows to the neighbours and receives their
/// rows into the halos.
fn exchange_halos(world: &impl Communicator, u: &mut [f64], local: usize, cols: usize) {
    let (rank, size) = (world.rank(), world.size());
    let first = cols..2 * cols;
    let last = local * cols..(local + 1) * cols;
    let halo_top = 0..cols;
    let halo_bottom = (local + 1) * cols..(local + 2) * cols;
    // Upwards: own first row to rank-1, halo_bottom from rank+1.
    shift(world, u, first, halo_bottom, rank - 1, rank + 1, size);
    // Downwards: own last row to rank+1, halo_top from rank-1.
    shift(world, u, last, halo_top, rank + 1, rank - 1, size);
}

fn shift(
    world: &impl Communicator,
    u: &mut [f64],
    send: std::ops::Range<usize>,
    recv: std::ops::Range<usize>,
    to: i32,
    from: i32,
    size: i32,
) {
    let (has_to, has_from) = ((0..size).contains(&to), (0..size).contains(&from));
    let outgoing: Vec<f64> = if has_to { u[send].to_vec() } else { Vec::new() };
    match (has_to, has_from) {
        (true, true) => {
            send_receive_into(
                &outgoing[..],
                &world.process_at_rank(to),
                &mut u[recv],
                &world.process_at_rank(from),
            );
        }
        (true, false) => world.process_at_rank(to).send(&outgoing[..]),
        (false, true) => {
            world.process_at_rank(from).receive_into(&mut u[recv]);
        }
        (false, false) => {}
    }
}
