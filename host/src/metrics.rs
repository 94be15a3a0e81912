//! Counters the daemon keeps in memory for `GET /metrics`.
//!
//! Why hand-written: the exposition format is a few lines of text, and the
//! numbers are a handful of atomics plus one histogram per handler, so a
//! metrics crate (and its registry, macros and build time) would buy
//! nothing. Job counts by state, outbox lag and dead letters are not kept
//! here: they are read from the store when scraped, so they are right
//! across restarts and for rows written by other processes.
//!
//! Recording never blocks on I/O: atomics, and one std `Mutex` held only
//! to find a handler's histogram (never across `.await`).
//!
//! `series` keeps the same outcomes per channel over time for the
//! dashboard's plots.

mod series;

pub use series::{BUCKET_MS, BUCKETS, Bucket, Series};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the handler duration buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One handler's call durations.
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`].
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
    /// Fuel used by these calls.
    fuel: u64,
}

/// One handler's calls since start, for the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct HandlerTotals {
    /// Calls recorded.
    pub calls: u64,
    /// Seconds from claim to committed outcome, summed.
    pub seconds: f64,
    /// Fuel used, summed.
    pub fuel: u64,
}

/// What the daemon counts while it runs. Shared by the pumps (jobs), the
/// registry swaps (reloads) and the API (rendering).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Fuel used by every call, summed.
    fuel_used: AtomicU64,
    /// Calls running now.
    in_flight: AtomicU64,
    /// Durations per handler plugin name.
    durations: Mutex<BTreeMap<String, Histogram>>,
    /// Outcomes per (handler, outcome).
    outcomes: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Outcomes per channel over time.
    pub series: Series,
    /// State conflicts (re-runs because state changed under a call) per
    /// handler.
    conflicts: Mutex<BTreeMap<String, u64>>,
    /// Cron ticks fired, duplicate and skipped (`crate::cron`).
    pub cron: crate::cron::Counters,
    /// Posts through the API whose uniqueness key was held: refused, or
    /// replacing the holder.
    unique: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// A call started; the returned guard ends it when dropped.
    pub fn call_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records one job outcome: how long it took (claim to commit), the
    /// fuel it used, and what became of it.
    pub fn record_job(&self, handler: &str, outcome: &'static str, seconds: f64, fuel: u64) {
        self.fuel_used.fetch_add(fuel, Ordering::Relaxed);
        {
            let mut map = self
                .durations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let h = map.entry(handler.to_owned()).or_default();
            for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
            h.fuel += fuel;
        }
        let mut map = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((handler.to_owned(), outcome)).or_default() += 1;
    }

    /// Counts `n` state conflicts of one job of `handler` (none: nothing).
    pub fn record_conflicts(&self, handler: &str, n: u32) {
        if n == 0 {
            return;
        }
        let mut map = self
            .conflicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(handler.to_owned()).or_default() += u64::from(n);
    }

    /// Fuel used so far.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used.load(Ordering::Relaxed)
    }

    /// Calls running now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls, time and fuel per handler since start.
    pub fn handler_totals(&self) -> BTreeMap<String, HandlerTotals> {
        let map = self
            .durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|(name, h)| {
                let totals = HandlerTotals {
                    calls: h.count,
                    seconds: h.sum,
                    fuel: h.fuel,
                };
                (name.clone(), totals)
            })
            .collect()
    }

    /// A post through the API met a held uniqueness key: `rejected` or
    /// `replaced`.
    pub fn unique_outcome(&self, outcome: &'static str) {
        *self
            .unique
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(outcome)
            .or_default() += 1;
    }

    /// Appends this process's counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.cron.render(out);
        let unique = self
            .unique
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        out.push_str(
            "# HELP sluice_unique_duplicates_total Posts through this daemon's API whose uniqueness key another message held: rejected, or replaced (the holder's waiting jobs cancelled).\n\
             # TYPE sluice_unique_duplicates_total counter\n",
        );
        for outcome in ["rejected", "replaced"] {
            let _ = writeln!(
                out,
                "sluice_unique_duplicates_total{{outcome=\"{outcome}\"}} {}",
                unique.get(outcome).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_fuel_used_total Wasm fuel used by handler calls.\n\
             # TYPE sluice_fuel_used_total counter\n\
             sluice_fuel_used_total {}",
            self.fuel_used()
        );
        let _ = writeln!(
            out,
            "# HELP sluice_in_flight Handler calls running now.\n\
             # TYPE sluice_in_flight gauge\n\
             sluice_in_flight {}",
            self.in_flight()
        );
        let outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        out.push_str(
            "# HELP sluice_job_outcomes_total Job outcomes recorded by this process.\n\
             # TYPE sluice_job_outcomes_total counter\n",
        );
        for ((handler, outcome), n) in &outcomes {
            let _ = writeln!(
                out,
                "sluice_job_outcomes_total{{handler=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(handler)
            );
        }
        let conflicts = self
            .conflicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        out.push_str(
            "# HELP sluice_state_conflicts_total Handler calls run again because state they read changed under them.\n\
             # TYPE sluice_state_conflicts_total counter\n",
        );
        for (handler, n) in &conflicts {
            let _ = writeln!(
                out,
                "sluice_state_conflicts_total{{handler=\"{}\"}} {n}",
                escape(handler)
            );
        }
        let durations = self
            .durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        out.push_str(
            "# HELP sluice_handler_duration_seconds Time from claim to committed outcome.\n\
             # TYPE sluice_handler_duration_seconds histogram\n",
        );
        for (handler, h) in &durations {
            let handler = escape(handler);
            for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "sluice_handler_duration_seconds_bucket{{handler=\"{handler}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "sluice_handler_duration_seconds_bucket{{handler=\"{handler}\",le=\"+Inf\"}} {}\n\
                 sluice_handler_duration_seconds_sum{{handler=\"{handler}\"}} {}\n\
                 sluice_handler_duration_seconds_count{{handler=\"{handler}\"}} {}",
                h.count, h.sum, h.count
            );
        }
    }
}

/// Counts a call as in flight until dropped.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Escapes a label value for the text format.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.record_job("h", "succeeded", 0.02, 10);
        m.record_job("h", "succeeded", 3.0, 5);
        m.record_conflicts("h", 2);
        m.record_conflicts("h", 0);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("sluice_fuel_used_total 15"), "{out}");
        assert!(
            out.contains("sluice_handler_duration_seconds_bucket{handler=\"h\",le=\"0.025\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("sluice_handler_duration_seconds_bucket{handler=\"h\",le=\"5\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("sluice_job_outcomes_total{handler=\"h\",outcome=\"succeeded\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("sluice_state_conflicts_total{handler=\"h\"} 2"),
            "{out}"
        );
    }

    #[test]
    fn in_flight_follows_guards() {
        let m = Metrics::default();
        let a = m.call_started();
        let b = m.call_started();
        assert_eq!(m.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(m.in_flight(), 0);
    }
}
