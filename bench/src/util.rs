//! Helpers the scenarios share: medians, timing, and synthetic state.

use pm_core::RegionBuf;
use rayon::prelude::*;
use std::sync::Barrier;
use std::time::Instant;

/// The median of `v` (the upper one for an even count); `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds `f` took.
pub fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The baseline every scenario compares with: the median time of `runs`
/// plain copies of `src` into the pre-faulted `dst` (same length).
pub fn memcpy_seconds(src: &[u8], dst: &mut [u8], runs: usize) -> f64 {
    let times = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(src);
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(times)
}

/// The median over `runs` of the slowest of one memcpy per pair in
/// `pairs`, all started together: the floor of a node whose ranks copy
/// their states at the same moment and share its memory bandwidth.
pub fn concurrent_memcpy_seconds(pairs: &mut [(RegionBuf, RegionBuf)], runs: usize) -> f64 {
    let times = (0..runs.max(1))
        .map(|_| {
            let start = Barrier::new(pairs.len());
            std::thread::scope(|s| {
                let copies: Vec<_> = pairs
                    .iter_mut()
                    .map(|(src, dst)| {
                        let start = &start;
                        s.spawn(move || {
                            start.wait();
                            let t = Instant::now();
                            dst.copy_from_slice(src);
                            t.elapsed().as_secs_f64()
                        })
                    })
                    .collect();
                copies
                    .into_iter()
                    .map(|c| c.join().expect("a memcpy thread panicked"))
                    .fold(0.0, f64::max)
            })
        })
        .collect();
    median(times)
}

/// Fills `state` with pseudo-random bytes (xorshift), in parallel.
pub fn fill_pseudo_random(state: &mut [u8]) {
    state
        .par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, c)| {
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for b in c.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
        });
}

/// Changes one byte in every `stride`-th chunk, so exactly those chunks hash differently.
pub fn touch_chunks(state: &mut [u8], chunk: usize, stride: usize, round: u8) {
    for (i, c) in state.chunks_mut(chunk).enumerate() {
        if i % stride == 0 {
            c[0] = c[0].wrapping_add(1).wrapping_add(round);
        }
    }
}

/// Standard output and error of a finished command, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Progress lines on stderr (`pmbench <scenario>: ...`), unless `quiet`.
pub fn progress(scenario: &'static str, quiet: bool) -> impl Fn(&str) {
    move |what| {
        if !quiet {
            eprintln!("pmbench {scenario}: {what}");
        }
    }
}

/// CPU seconds this process has used so far, all threads together.
pub fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}
