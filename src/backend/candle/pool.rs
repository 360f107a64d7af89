//! rayon's global thread pool, which the CPU kernels (`super::cpu`) run on:
//! starting it with the generating thread as one of its workers, and the
//! thread counts it accepts.

use crate::error::{Error, Result};

/// Starts rayon's global thread pool, which the CPU backend computes on,
/// with the calling thread as one of its `threads` (default: rayon's,
/// `RAYON_NUM_THREADS` or one per core). Call it once, early, from the
/// thread that will call [`Generator::generate`](crate::Generator::generate).
///
/// Optional, and only about speed. Without it every forward pass is handed
/// from the caller's thread to a pool thread and back, two wake-ups that
/// cost 30-40 us together on the 2-core machine of the benchmarks: a
/// quarter of a py-xs draft pass (124 -> 93 us a pass with it), and ~15%
/// of the draft's time in a generation. The calling thread works for the pool only
/// while it is inside one of its calls, so it stays free otherwise.
///
/// Errors with [`Error::InvalidSetting`]
/// (`threads`) if `threads` (or `RAYON_NUM_THREADS`, when `threads` is
/// `None`) is 0 or above [`max_threads`], or the global pool is already running
/// (started by an earlier call, or by any rayon use before this one).
pub fn init_thread_pool(threads: Option<usize>) -> Result<()> {
    let mut builder = rayon::ThreadPoolBuilder::new().use_current_thread();
    let cap = max_threads();
    let expected = || format!("1..={cap} ({THREADS_PER_CORE} per core of this machine)");
    if let Some(n) = threads {
        if n == 0 || n > cap {
            return Err(Error::setting("threads", n, expected()));
        }
        builder = builder.num_threads(n);
    } else if let Some(env) = std::env::var_os("RAYON_NUM_THREADS") {
        let env = env.to_string_lossy();
        if env.trim().parse::<usize>().is_ok_and(|n| n > cap) {
            return Err(Error::setting(
                "threads",
                format!("RAYON_NUM_THREADS={env}"),
                expected(),
            ));
        }
    }
    builder.build_global().map_err(|e| {
        Error::setting(
            "threads",
            threads.map_or("default".to_string(), |n| n.to_string()),
            format!("a first start of rayon's global pool ({e})"),
        )
    })
}

/// The most threads [`init_thread_pool`] starts per core: more only adds
/// spinning workers (10000 threads on 2 cores drove the load average into
/// the hundreds and never finished).
pub const THREADS_PER_CORE: usize = 8;

/// The largest thread count [`init_thread_pool`] accepts:
/// [`THREADS_PER_CORE`] times the cores this process may use.
pub fn max_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * THREADS_PER_CORE
}
