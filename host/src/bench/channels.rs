//! `sluice bench --channels A,B,C,D`: several busy channels at once (issue
//! 18). Each plugin's first channel gets a backlog of `--messages`
//! messages, then every pump starts at once on the embedded queue; the run
//! reports drain throughput, peak RSS, RSS when the backlog is done and
//! RSS after the host sat idle, next to the first plugin's channel drained
//! alone (the single-channel baseline, measured in the same process).
//!
//! The idle reading is taken after `[sandbox] idle_release`, with the
//! daemon's idle memory release (`idle.rs`) running as in `sluice run`.
//!
//! Why the multi-channel drain runs first: RSS only says something about
//! the host when nothing ran before it in the process (allocator arenas
//! and pool slots a previous run warmed would count).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probe::{Probe, Timed};
use super::stats::{self, human, mib, rate};
use super::workload::{AMOUNTS_PLUGIN, Workload};
use crate::config::Config;
use crate::message::{Message, MessageKind, new_id};
use crate::pump::{self, Control, Deps};
use crate::registry::{self, Entry, PluginSet, Registry};
use crate::runtime::{PluginKind, Runtime, SandboxStats};
use crate::store::{NewMessage, Store, StoreOptions};
use crate::transport::{Embedded, Subscription, Transport};

/// The plugins `--channels` drives when given `default`.
pub const DEFAULT_PLUGINS: &str = "bench-amounts,test-flaky,test-lanes,test-spin";

/// How long the host sits idle before its idle RSS is read: past
/// `[sandbox] idle_release`, when the daemon gives free heap memory back
/// (`idle.rs`, run here as in the daemon).
fn idle_wait(runtime: &Runtime) -> Duration {
    runtime.config().idle_release + Duration::from_secs(2)
}

/// One channel of the run.
struct Lane {
    sub: Subscription,
    workload: Workload,
}

/// What one drain measured.
struct Drain {
    handled: usize,
    messages: usize,
    took: Duration,
    peak_rss: Option<u64>,
    done_rss: Option<u64>,
    idle_rss: Option<u64>,
    /// The sandbox at the end of the drain and after the idle period.
    done: SandboxStats,
    idle: SandboxStats,
}

/// Runs the multi-channel drain and its single-channel baseline, prints
/// them; `Err` when a run lost or failed a job.
pub async fn run(
    config: Arc<Config>,
    runtime: &Runtime,
    paths: &[PathBuf],
    each: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut lanes = Vec::new();
    for path in paths {
        let plugin = registry::load_file(runtime, &config, path)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let info = plugin.info().clone();
        if info.kind != PluginKind::Handler {
            bail!("{} is a mapper; --channels needs handlers", path.display());
        }
        let Some(channel) = info.channels.first().cloned() else {
            bail!("{} handles no channel", path.display());
        };
        let workload = match info.name.as_str() {
            AMOUNTS_PLUGIN => Workload::Amounts,
            "test-counter" => Workload::Fixed(r#"{"amount":1}"#.into()),
            "test-lanes" | "test-spin" => Workload::Fixed(r#"{"millis":0}"#.into()),
            _ => Workload::Fixed("{}".into()),
        };
        lanes.push(Lane {
            sub: Subscription {
                channel,
                consumer: info.name.clone(),
            },
            workload,
        });
        entries.push(Entry {
            path: path.clone(),
            plugin: Some(plugin),
            error: None,
        });
    }
    let set = registry::compose(&entries);
    drop(entries);
    let calls = runtime.config().max_instances;
    let concurrency: Vec<String> = lanes
        .iter()
        .map(|l| config.policy_for(&l.sub.consumer).concurrency.to_string())
        .collect();
    println!(
        "sluice bench --channels: {} channels x {each} messages, concurrency {}, [sandbox] calls {calls}",
        lanes.len(),
        concurrency.join("/"),
    );
    let multi = drain(&config, runtime, &set, &lanes, each, &dir.join("channels")).await?;
    let single = drain(
        &config,
        runtime,
        &set,
        &lanes[..1],
        each,
        &dir.join("single"),
    )
    .await?;
    let t = "[channels]";
    let line = |what: &str, d: &Drain| {
        println!(
            "{t:<12} {what:<8} {} of {} jobs in {} = {:.0} jobs/s",
            d.handled,
            d.messages,
            human(d.took),
            rate(d.handled, d.took)
        );
    };
    line("all", &multi);
    line("single", &single);
    let (all_rate, one_rate) = (
        rate(multi.handled, multi.took),
        rate(single.handled, single.took),
    );
    println!(
        "{t:<12} ratio    all/single throughput {:.2}x (target >= 0.90x)",
        all_rate / one_rate.max(f64::MIN_POSITIVE)
    );
    let show = |r: Option<u64>| r.map_or_else(|| "n/a".to_owned(), mib);
    println!(
        "{t:<12} rss      peak {} (target <= 96 MiB), when done {}, after {} idle {} (target <= 64 MiB)",
        show(multi.peak_rss),
        show(multi.done_rss),
        human(idle_wait(runtime)),
        show(multi.idle_rss)
    );
    for (when, s) in [("when done", multi.done), ("idle", multi.idle)] {
        println!(
            "{t:<12} sandbox  {when}: {} calls peak of {}, {} warm slots keep {} resident",
            s.calls.peak,
            s.calls.budget,
            s.warm_slots,
            mib(s.idle_resident_bytes)
        );
    }
    for d in [&multi, &single] {
        if d.handled != d.messages {
            bail!("{} of {} jobs succeeded", d.handled, d.messages);
        }
    }
    Ok(())
}

/// Enqueues `each` messages on every lane's channel, starts every lane's
/// pump at once, waits until all are handled, then lets the host idle.
async fn drain(
    config: &Arc<Config>,
    runtime: &Runtime,
    set: &PluginSet,
    lanes: &[Lane],
    each: usize,
    dir: &Path,
) -> anyhow::Result<Drain> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = Store::open(
        &dir.join("sluice.db"),
        &StoreOptions {
            outbox: false,
            ..config.store.clone()
        },
    )?;
    let total = each * lanes.len();
    let probe = Probe::new(format!("bench-{}-", new_id()), total);
    let deps = Arc::new(Deps {
        store: store.clone(),
        transport: Timed {
            inner: Embedded::new(store.clone(), config.poll_interval),
            probe: probe.clone(),
        },
        registry: Arc::new(Registry::new(set.clone())),
        config: config.clone(),
        control: Arc::new(Control::with_sandbox(runtime.clone())),
        state: crate::state::Ledger::new(store.clone(), crate::state::DEFAULT_CACHE_BYTES),
    });
    let subs: Vec<Subscription> = lanes.iter().map(|l| l.sub.clone()).collect();
    deps.transport
        .register(&subs)
        .await
        .context("registering the subscriptions")?;
    for (k, lane) in lanes.iter().enumerate() {
        for from in (0..each).step_by(500) {
            let to = (from + 500).min(each);
            let at = Instant::now();
            let batch = (from..to)
                .map(|i| {
                    let index = k * each + i;
                    probe.posted(index, at);
                    NewMessage {
                        message: Message {
                            id: probe.id(index),
                            channel: lane.sub.channel.clone(),
                            kind: MessageKind::Command,
                            headers: Vec::new(),
                            body: lane.workload.body(i),
                        },
                        visible_at: 0,
                        expires_at: None,
                    }
                })
                .collect();
            deps.transport.publish(batch).await.context("enqueueing")?;
        }
    }
    let shutdown = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let pumps = TaskTracker::new();
    pumps.spawn(crate::idle::release_when_idle(
        runtime.clone(),
        runtime.config().idle_release,
        shutdown.child_token(),
    ));
    stats::reset_peak_rss();
    let started = Instant::now();
    for sub in subs {
        pumps.spawn(pump::run(
            sub,
            deps.clone(),
            shutdown.child_token(),
            hard_stop.clone(),
        ));
    }
    let timeout = Duration::from_secs(60).max(Duration::from_millis(total as u64));
    if !probe.wait_all(timeout).await {
        tracing::warn!(
            handled = probe.done(),
            total,
            "not every message was handled within {timeout:?}"
        );
    }
    let took = probe.last_handled_after(started);
    let (peak_rss, done_rss) = (stats::peak_rss(), stats::current_rss());
    let done = runtime.sandbox_stats();
    // The pumps stay up, idle, as in a daemon whose backlog is done.
    tokio::time::sleep(idle_wait(runtime)).await;
    let (idle_rss, idle) = (stats::current_rss(), runtime.sandbox_stats());
    super::drive::stop_pumps(&pumps, &shutdown, &hard_stop).await;
    Ok(Drain {
        handled: probe.done(),
        messages: total,
        took,
        peak_rss,
        done_rss,
        idle_rss,
        done,
        idle,
    })
}
