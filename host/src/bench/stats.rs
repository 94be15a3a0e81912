//! Numbers for the report: latency percentiles from raw samples, rates,
//! the process's peak resident memory, and the CPU time its threads spent.
//!
//! CPU time per job is the figure that survives a loaded box: wall-clock
//! rates on two shared cores vary 2-3x with the neighbours' builds, the
//! nanoseconds a thread spent on a CPU (`/proc/self/task/*/schedstat`) much
//! less. It is split into the store's writer thread (one thread: its time
//! per job bounds the drain rate whatever the cores) and all the others.
//!
//! Why raw samples rather than a histogram: a run holds at most a few
//! hundred thousand of them (8 bytes each), sorting them once is cheap, and
//! exact p99 and max are what the targets are stated in.

use std::time::Duration;

use crate::idle::status_kib;

/// p50 / p99 / max of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Percentiles {
    /// From samples in nanoseconds (reordered in place).
    pub fn of_nanos(samples: &mut [u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            Duration::from_nanos(samples[i.min(samples.len() - 1)])
        };
        Percentiles {
            count: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    /// `p50 1.2 ms  p99 3.4 ms  max 5.6 ms`.
    pub fn line(&self) -> String {
        format!(
            "p50 {}  p99 {}  max {}",
            human(self.p50),
            human(self.p99),
            human(self.max)
        )
    }
}

/// A duration in the unit that reads best (ns, us, ms, s).
pub fn human(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else if ns < 10_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

/// Items per second; 0 for an empty interval.
pub fn rate(items: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        items as f64 / secs
    }
}

/// `ours / base` as `0.42x`; `n/a` when the base is zero.
pub fn ratio(ours: f64, base: f64) -> String {
    if base <= 0.0 {
        "n/a".into()
    } else {
        format!("{:.2}x", ours / base)
    }
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size (`VmRSS`), in bytes.
pub fn current_rss() -> Option<u64> {
    crate::idle::resident_bytes()
}

/// Resets the peak (`VmHWM`) to the current RSS, so the next reading is the
/// peak of what runs from now on. Best effort: needs Linux 4.0+.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Nanoseconds this process's threads have run on a CPU so far: the store's
/// writer thread (`sluice-store`) and all the others together. Threads that
/// ended before the reading are not counted, so take readings around a
/// stretch in which the threads that do its work live throughout (the
/// drain's pump, workers and writer do). `None` where `/proc` has no
/// `schedstat` (not Linux, or a kernel without schedstats).
pub fn thread_cpu() -> Option<ThreadCpu> {
    let mut cpu = ThreadCpu::default();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() == crate::store::WRITER_THREAD {
            cpu.store += ns;
        } else {
            cpu.other += ns;
        }
    }
    Some(cpu)
}

/// CPU time of the process's threads, in nanoseconds (see [`thread_cpu`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThreadCpu {
    /// The store's writer thread.
    pub store: u64,
    /// Every other thread (pumps and sandboxes on the tokio workers, the
    /// reader thread, the epoch ticker).
    pub other: u64,
}

impl ThreadCpu {
    /// What ran between `before` and `self`.
    pub fn since(self, before: ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            store: self.store.saturating_sub(before.store),
            other: self.other.saturating_sub(before.other),
        }
    }

    /// Per job of `jobs`, in microseconds: (store thread, other threads).
    pub fn per_job_us(self, jobs: usize) -> (f64, f64) {
        let n = jobs.max(1) as f64;
        (self.store as f64 / n / 1e3, self.other as f64 / n / 1e3)
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let p = Percentiles::of_nanos(&mut v);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Duration::from_nanos(51));
        assert_eq!(p.p99, Duration::from_nanos(99));
        assert_eq!(p.max, Duration::from_nanos(100));
        assert_eq!(Percentiles::of_nanos(&mut []), Percentiles::default());
    }

    #[test]
    fn reads_this_process_memory() {
        assert!(peak_rss().is_some_and(|b| b > 0));
        assert!(current_rss().is_some_and(|b| b > 0));
    }

    #[test]
    fn counts_cpu_time_per_thread() {
        let Some(before) = thread_cpu() else {
            return; // no schedstat on this kernel: the bench says "n/a"
        };
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let Some(after) = thread_cpu() else {
            panic!("schedstat went away");
        };
        let ran = after.since(before);
        // Other tests' threads run meanwhile, so only a lower bound holds:
        // this thread was on a CPU for part of its 20 ms spin.
        assert!(ran.other > 0, "this thread spun 20 ms: {ran:?}");
        assert_eq!(ran.per_job_us(0).1, ran.other as f64 / 1e3);
        assert_eq!(ran.per_job_us(2).1, ran.other as f64 / 2e3);
    }

    #[test]
    fn formats() {
        assert_eq!(human(Duration::from_nanos(950)), "950 ns");
        assert_eq!(human(Duration::from_micros(12)), "12.0 us");
        assert_eq!(human(Duration::from_millis(15)), "15.00 ms");
        assert_eq!(human(Duration::from_millis(5)), "5.00 ms");
        assert_eq!(ratio(1.0, 4.0), "0.25x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }
}
