//! Memory given back when the host goes idle (issue 18).
//!
//! Why: once a backlog has drained, most of what a host keeps resident
//! beyond its base is the allocator's, not the sandbox's. glibc's malloc
//! keeps freed memory in its per-thread arenas for reuse, and a busy host
//! frees a lot (messages, effects, store batches, each call's wasmtime
//! store), so the daemon of issue 18's workload (four busy channels, 5,000
//! messages each) sat at 65 MiB for as long as it stayed idle, 21 MiB of
//! that free heap. The sandbox holds little by then: a pool slot keeps only
//! the pages its last call dirtied (the PAGEMAP_SCAN reset, `runtime`'s
//! `engine.rs`), 0.2 MiB for 12 warm slots in that run; wasmtime 48 has no
//! call that releases warm slots in any case.
//!
//! So once no sandboxed call has been let in for `[sandbox] idle_release`
//! (5 s by default), one task asks the allocator to return its free pages
//! to the kernel (`malloc_trim(0)`, which since glibc 2.8 walks every
//! arena, not only the top of the main heap), once per quiet period. It
//! costs a few milliseconds of one blocking thread, only when there is
//! nothing else to do; the next burst takes pages from the kernel as at
//! start. With another allocator (musl, other systems) there is nothing to
//! call and the task only watches.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

/// How often the task reads the call counters.
const TICK: Duration = Duration::from_millis(250);

/// A release that returned less than this is logged at debug level only.
const WORTH_TELLING: u64 = 1024 * 1024;

/// Watches `runtime`'s calls until `stop`: after `quiet` in which no call
/// was let in or ran, gives free heap memory back to the kernel, once per
/// quiet period.
pub async fn release_when_idle(runtime: Runtime, quiet: Duration, stop: CancellationToken) {
    let mut seen = None;
    let mut quiet_since = Instant::now();
    let mut released = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK.min(quiet)) => {}
            _ = stop.cancelled() => return,
        }
        let calls = runtime.sandbox_stats().calls;
        if calls.running > 0 || calls.waiting > 0 || seen != Some(calls.admitted) {
            seen = Some(calls.admitted);
            quiet_since = Instant::now();
            released = false;
            continue;
        }
        if released || quiet_since.elapsed() < quiet {
            continue;
        }
        released = true;
        let before = resident_bytes();
        let started = Instant::now();
        if tokio::task::spawn_blocking(trim_heap).await.is_err() {
            tracing::warn!("idle: the heap trim did not finish");
            continue;
        }
        let after = resident_bytes();
        // MiB with one decimal (-1: unknown).
        let mib = |b: Option<u64>| b.map_or(-1.0, |b| (b as f64 / 104_857.6).round() / 10.0);
        let gave = before.zip(after).map_or(0, |(b, a)| b.saturating_sub(a));
        let took = started.elapsed();
        if gave >= WORTH_TELLING {
            tracing::info!(
                rss_before_mib = mib(before),
                rss_after_mib = mib(after),
                ?took,
                "idle: gave free heap memory back to the kernel"
            );
        } else {
            tracing::debug!(
                rss_before_mib = mib(before),
                rss_after_mib = mib(after),
                ?took,
                "idle: gave free heap memory back to the kernel"
            );
        }
    }
}

/// Returns the free memory of every malloc arena to the kernel; `true` if
/// some was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes no pointers; it works on the allocator's
    // own free lists under the allocator's own locks, and glibc documents
    // it as MT-Safe (callable from any thread at any time).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Nothing to call on this allocator.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() -> bool {
    false
}

/// This process's resident set size now (`VmRSS`), in bytes; `None` off
/// Linux.
pub fn resident_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// A `kB` field of `/proc/self/status`.
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
