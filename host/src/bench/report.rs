//! The printed report: one line per figure, each with its target where the
//! issue states one, and ratios to the baselines measured in the same run.
//!
//! Why plain aligned lines: they read well in a terminal and paste as-is
//! into the README; every line starts with its section so `grep` works.

use std::time::Duration;

use super::BenchArgs;
use super::baseline::{RAW_BATCH, RawReport, SandboxReport};
use super::drive::{Mode, RunReport};
use super::stats::{self, human, mib, rate, ratio};
use super::swap::SwapReport;
use crate::config::{Config, Policy};
use crate::runtime::PluginInfo;
use crate::store::Synchronous;

/// Targets on a 2-core box (issue 6).
const EMBEDDED_DRAIN_TARGET: f64 = 100_000.0;
const JETSTREAM_VS_RAW_TARGET: f64 = 0.5;
const SANDBOX_P50_TARGET: Duration = Duration::from_micros(10);
const STEADY_P99_TARGET: Duration = Duration::from_millis(5);
const RSS_TARGET: u64 = 64 * 1024 * 1024;

/// Collects what the report needs across phases and prints as it goes.
pub struct Report {
    /// The JetStream backlog drain, to compare with the raw baseline.
    pub jetstream_drain: Option<RunReport>,
    peak_rss: u64,
}

impl Report {
    /// An empty report.
    pub fn new() -> Report {
        Report {
            jetstream_drain: None,
            peak_rss: 0,
        }
    }

    /// What runs, on what.
    pub fn header(
        &self,
        info: &PluginInfo,
        channel: &str,
        body: &str,
        args: &BenchArgs,
        policy: &Policy,
        config: &Config,
    ) {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let sync = match config.store.synchronous {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        };
        println!(
            "sluice bench: {} {} on {channel}, body {body}, {} messages, concurrency {}, {cores} cores, synchronous={sync}",
            info.name, info.version, args.messages, policy.concurrency
        );
    }

    /// One drain or steady-state run.
    pub fn run(&mut self, transport: &str, mode: Mode, r: &RunReport) {
        let t = format!("[{transport}]");
        match mode {
            Mode::Drain { .. } => {
                if let Some(e) = r.enqueue {
                    println!(
                        "{t:<12} enqueue   {} msgs in {}  = {:.0} msgs/s",
                        r.messages,
                        human(e),
                        rate(r.messages, e)
                    );
                }
                let jobs = rate(r.handled, r.drain);
                let target = if transport == "embedded" {
                    format!(
                        "   (target >= {EMBEDDED_DRAIN_TARGET:.0}: {})",
                        ratio(jobs, EMBEDDED_DRAIN_TARGET)
                    )
                } else {
                    String::new()
                };
                println!(
                    "{t:<12} drain     {} jobs in {}  = {jobs:.0} jobs/s{target}",
                    r.handled,
                    human(r.drain)
                );
                println!("{t:<12} latency   post->handled {}", r.latency.line());
            }
            Mode::Steady {
                rate: offered,
                duration,
            } => {
                let met = if r.latency.p99 <= STEADY_P99_TARGET {
                    "met"
                } else {
                    "missed"
                };
                println!(
                    "{t:<12} steady    {offered} msgs/s offered for {}: {} handled at {:.0} jobs/s",
                    human(duration),
                    r.handled,
                    rate(r.handled, r.drain)
                );
                println!(
                    "{t:<12} latency   post->handled {}   (target p99 <= {}: {met})",
                    r.latency.line(),
                    human(STEADY_P99_TARGET)
                );
            }
        }
        println!(
            "{t:<12} jobs      {} of {} succeeded in SQLite, {} other settles; fuel {:.0} per job",
            r.succeeded_rows, r.messages, r.other_settles, r.fuel_per_job
        );
        if let Some(peak) = r.peak_rss {
            self.peak_rss = self.peak_rss.max(peak);
            let met = if peak <= RSS_TARGET { "met" } else { "missed" };
            println!(
                "{t:<12} rss       peak {}   (target <= {}: {met})",
                mib(peak),
                mib(RSS_TARGET)
            );
        }
    }

    /// The raw JetStream baseline.
    pub fn raw(&self, messages: usize, r: &RawReport) {
        println!(
            "{:<12} raw JetStream publish {} msgs in {} = {:.0} msgs/s; consume+ack (native handler, pulls of {RAW_BATCH}) in {} = {:.0} msgs/s",
            "[baseline]",
            messages,
            human(r.publish),
            rate(messages, r.publish),
            human(r.consume),
            rate(messages, r.consume)
        );
    }

    /// JetStream drain as a ratio of raw consume + ack.
    pub fn jetstream_vs_raw(&self, messages: usize, raw: Option<&RawReport>) {
        let (Some(ours), Some(raw)) = (&self.jetstream_drain, raw) else {
            return;
        };
        let ours = rate(ours.handled, ours.drain);
        let base = rate(messages, raw.consume);
        let met = if base > 0.0 && ours / base >= JETSTREAM_VS_RAW_TARGET {
            "met"
        } else {
            "missed"
        };
        println!(
            "{:<12} drain {ours:.0} jobs/s vs raw consume+ack {base:.0} msgs/s = {}   (target >= {JETSTREAM_VS_RAW_TARGET}x: {met})",
            "[jetstream]",
            ratio(ours, base)
        );
    }

    /// Sandbox cost against a native call.
    pub fn sandbox(&self, r: &SandboxReport) {
        let met = if r.sandbox.p50 <= SANDBOX_P50_TARGET {
            "met"
        } else {
            "missed"
        };
        println!(
            "{:<12} sandbox   instantiate+call+drop {}   (target p50 <= {}: {met}); fuel {} per call{}",
            "[baseline]",
            r.sandbox.line(),
            human(SANDBOX_P50_TARGET),
            r.fuel,
            if r.failed > 0 {
                format!("; {} calls FAILED", r.failed)
            } else {
                String::new()
            }
        );
        println!(
            "{:<12} native    same work as a Rust call {}   sandbox/native p50 = {}",
            "[baseline]",
            r.native.line(),
            ratio(r.sandbox.p50.as_secs_f64(), r.native.p50.as_secs_f64())
        );
    }

    /// Hot reload swap latency.
    pub fn swap(&self, swaps: usize, r: &SwapReport) {
        println!(
            "{:<12} swap      file written -> new version serving, {swaps} swaps: {}",
            "[reload]",
            r.latency.line()
        );
    }

    /// A phase that could not run.
    pub fn skipped(&self, what: &str, why: &anyhow::Error) {
        println!("{:<12} skipped: {why:#}", format!("[{what}]"));
    }

    /// The closing line.
    pub fn finish(&self) {
        let now = stats::current_rss().map_or_else(|| "?".into(), mib);
        println!(
            "{:<12} rss       peak over the host runs {}, now {now}",
            "[process]",
            mib(self.peak_rss)
        );
    }
}
