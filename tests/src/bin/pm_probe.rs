//! Test helper: small MPI programs that exercise one feature of the rank
//! runtime each and print what a test checks.
//!
//! * `pm_probe imbalance SLOW_MS FAST_MS STEPS`: rank 0 computes SLOW_MS per
//!   step, the others FAST_MS; every step ends with a ring exchange and an
//!   allreduce, so the fast ranks wait. Prints each rank's step statistics:
//!   `rank R compute_ms C wall_ms W mpi_ms M`.
//! * `pm_probe values STEPS PAUSE_MS`: keeps an RNG state and a history in
//!   serde values and a region, prints `final <digest>` at the end; killed
//!   and run again it must print the same digest.
//! * `pm_probe borrowed`: calls `step()` inside `Region::with_mut`, with a
//!   `Value::borrow_mut` held, and inside `Region::with`; prints what each
//!   returned and the step and epoch after it.

use mpi::traits::*;
use pm::{Action, Runtime};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

fn spin(d: Duration) {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < d {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

#[derive(Serialize, Deserialize, Clone, Default)]
struct History {
    sums: Vec<u64>,
    label: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let universe = mpi::initialize().unwrap();
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let mut rt = Runtime::init(&world).unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    match args[1].as_str() {
        "imbalance" => {
            let (slow, fast, steps) = (num(2), num(3), num(4));
            let ms = if rank == 0 { slow } else { fast };
            let mut buf = vec![rank as f64; 1024];
            for _ in 0..steps {
                spin(Duration::from_millis(ms));
                let next = world.process_at_rank((rank + 1) % size);
                let prev = world.process_at_rank((rank + size - 1) % size);
                let out = buf.clone();
                mpi::point_to_point::send_receive_into(&out[..], &next, &mut buf[..], &prev);
                let mut total = 0.0f64;
                world.all_reduce_into(&buf[0], &mut total, mpi::collective::SystemOperation::sum());
                rt.step().unwrap();
            }
            let s = rt.stats();
            println!(
                "rank {rank} compute_ms {:.2} wall_ms {:.2} mpi_ms {:.2}",
                s.compute_mean * 1e3,
                s.wall_mean * 1e3,
                s.mpi_time.as_secs_f64() * 1e3 / s.steps as f64
            );
        }
        "values" => {
            let (steps, pause) = (num(2), num(3));
            let rng = rt
                .value("rng", 0x2545_F491_4F6C_DD1Du64 ^ rank as u64)
                .unwrap();
            let history = rt.value("history", History::default()).unwrap();
            let mut acc = rt.region::<u64>("acc", 257).unwrap();
            let start = rt.restored_step().unwrap_or(0);
            if let Some(step) = rt.restored_step() {
                println!("resumed from step {step}");
            }
            for step in start..steps {
                let mut x = rng.get();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                rng.set(x);
                let sum = acc.with_mut(|acc| {
                    acc[(x % 257) as usize] = acc[(x % 257) as usize].wrapping_add(x);
                    acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                });
                {
                    let mut h = history.borrow_mut();
                    h.sums.push(sum);
                    h.label = format!("rank {rank} step {step}");
                }
                std::thread::sleep(Duration::from_millis(pause));
                if rt.step().unwrap() == Action::Exit {
                    return;
                }
            }
            let h = history.get();
            let digest = h.sums.iter().fold(rng.get(), |a, &b| a.rotate_left(7) ^ b);
            println!(
                "rank {rank} final {digest:016x} {} entries, {}",
                h.sums.len(),
                h.label
            );
        }
        "borrowed" => {
            // Every step checkpoints (PM_EVERY=1): a step() that is refused
            // must leave no checkpoint behind and not count.
            let mut u = rt.region::<f64>("u", 16).unwrap();
            let seed = rt.value("seed", 7u64).unwrap();
            let report = |what: &str, result: Result<Action, pm::PmError>, rt: &Runtime| {
                let taken = rt.last_checkpoint().map_or(0, |c| c.epoch);
                let result = result.map_err(|e| e.to_string());
                println!(
                    "rank {rank} {what}: {result:?}, step {} epoch {taken}",
                    rt.current_step()
                );
            };
            let inside = u.with_mut(|g| {
                g[0] = 1.0;
                rt.step()
            });
            report("inside with_mut", inside, &rt);
            let held = seed.borrow_mut();
            let across = rt.step();
            drop(held);
            report("value held", across, &rt);
            let reading = u.with(|_| rt.step());
            report("inside with", reading, &rt);
        }
        other => panic!("unknown probe {other:?}"),
    }
    rt.finalize().unwrap();
}
