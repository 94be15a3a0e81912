//! Drives messages through a real in-process host: the same store, runtime,
//! registry and pumps `sluice run` builds (see `daemon.rs`), on a chosen
//! transport, timed by a [`Probe`].
//!
//! Two modes, as in `nats bench`:
//! - **backlog drain**: enqueue N messages with no pump running (enqueue
//!   throughput), then start the pump and time until all N are handled
//!   (drain throughput);
//! - **steady state**: the pump runs; messages are posted at a fixed offered
//!   rate, each stamped with the time it was *due* (not when the poster got
//!   to it, so a lagging poster shows up as latency instead of hiding it).
//!
//! "Handled" is when the pump settled the delivery, which it does only
//! after the job's outcome committed to SQLite (see `probe.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use rusqlite::params;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probe::{Probe, Timed};
use super::stats::{self, Percentiles};
use super::workload::Workload;
use crate::config::Config;
use crate::message::{Message, MessageKind, new_id};
use crate::pump::{self, Deps};
use crate::registry::{PluginSet, Registry};
use crate::state::Remote;
use crate::store::{NewMessage, Store};
use crate::telemetry::Spans;
use crate::transport::{Subscription, Transport};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Enqueue everything, then drain.
    Drain {
        /// How many messages.
        messages: usize,
    },
    /// Post at `rate` messages/s for `duration`.
    Steady {
        /// Offered messages per second.
        rate: u32,
        /// How long to offer them.
        duration: Duration,
    },
}

impl Mode {
    fn messages(&self) -> usize {
        match *self {
            Mode::Drain { messages } => messages,
            Mode::Steady { rate, duration } => {
                (f64::from(rate) * duration.as_secs_f64()).round() as usize
            }
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Messages offered.
    pub messages: usize,
    /// Time to enqueue them all (backlog mode).
    pub enqueue: Option<Duration>,
    /// From the pump's start (or the first post) to the last handled.
    pub drain: Duration,
    /// Post -> handled.
    pub latency: Percentiles,
    /// Handled successfully (settled as done).
    pub handled: usize,
    /// Settles that were not a success (conflicts, retries, dead letters).
    pub other_settles: usize,
    /// Jobs of this run in state `succeeded` in SQLite afterwards.
    pub succeeded_rows: usize,
    /// Mean fuel recorded per succeeded job.
    pub fuel_per_job: f64,
    /// Sum of the amounts the succeeded jobs recorded as their result
    /// (the amounts workload only).
    pub amount_sum: Option<i64>,
    /// What `amount_sum` must be.
    pub expected_sum: Option<i64>,
    /// Re-runs because state changed under a call: all the run's jobs
    /// together, and the most one job needed.
    pub reruns: (u64, u64),
    /// Peak RSS of the process during the run (`VmHWM`, reset before it).
    pub peak_rss: Option<u64>,
    /// CPU time the process's threads spent from the pump's start (or the
    /// first post) to the last handled (`None`: no schedstat here).
    pub cpu: Option<stats::ThreadCpu>,
}

/// The host under test: its store, its plugins, its policies.
pub struct Host {
    /// The store the transport and pumps use.
    pub store: Store,
    /// The plugins (one handler).
    pub set: PluginSet,
    /// The subscription driven.
    pub sub: Subscription,
    /// Policies and timings.
    pub config: Arc<Config>,
    /// What each message carries.
    pub workload: Workload,
    /// The span exporter, for a traced run (`[otel]` on).
    pub spans: Option<Arc<Spans>>,
}

/// Runs `mode` through `transport` on `host`. `transport` must already be
/// connected to `host.store`.
pub async fn run<T: Transport>(host: &Host, transport: T, mode: Mode) -> anyhow::Result<RunReport> {
    run_hosts(std::slice::from_ref(host), vec![(transport, None)], mode).await
}

/// Runs `mode` on several hosts at once, competing for the same messages
/// (JetStream): `hosts[i]` pulls through `transports[i]`, connected to its
/// own store, with state in the shared store when one is given. The first
/// host posts the messages; the report adds up every host's jobs.
pub async fn run_hosts<T: Transport>(
    hosts: &[Host],
    transports: Vec<(T, Option<Arc<dyn Remote>>)>,
    mode: Mode,
) -> anyhow::Result<RunReport> {
    let n = mode.messages();
    anyhow::ensure!(n > 0, "nothing to send: the run has 0 messages");
    anyhow::ensure!(
        !hosts.is_empty() && hosts.len() == transports.len(),
        "a run needs a transport for each of its hosts"
    );
    let prefix = format!("bench-{}-", new_id());
    let probe = Probe::new(prefix.clone(), n);
    let members: Vec<Arc<Deps<Timed<T>>>> = hosts
        .iter()
        .zip(transports)
        .map(|(host, (transport, remote))| {
            Arc::new(Deps {
                store: host.store.clone(),
                state: crate::state::Ledger::with_remote(
                    host.store.clone(),
                    crate::state::DEFAULT_CACHE_BYTES,
                    remote,
                ),
                transport: Timed {
                    inner: transport,
                    probe: probe.clone(),
                },
                registry: Arc::new(Registry::new(host.set.clone())),
                config: host.config.clone(),
                control: Default::default(),
            })
        })
        .collect();
    for (host, deps) in hosts.iter().zip(&members) {
        if let Some(spans) = &host.spans {
            deps.control.set_spans(spans.clone());
        }
        deps.transport
            .register(std::slice::from_ref(&host.sub))
            .await
            .context("registering the subscription")?;
    }
    let (first, deps) = (&hosts[0], &members[0]);
    let shutdown = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let pumps = TaskTracker::new();
    let start_pumps = || {
        for (host, deps) in hosts.iter().zip(&members) {
            pumps.spawn(pump::run(
                host.sub.clone(),
                deps.clone(),
                shutdown.child_token(),
                hard_stop.clone(),
            ));
        }
    };
    stats::reset_peak_rss();
    let (enqueue, started, cpu_before) = match mode {
        Mode::Drain { messages } => {
            let began = Instant::now();
            enqueue_all(deps, first, &probe, messages).await?;
            let enqueue = began.elapsed();
            let cpu_before = stats::thread_cpu();
            let started = Instant::now();
            start_pumps();
            (Some(enqueue), started, cpu_before)
        }
        Mode::Steady { rate, .. } => {
            let cpu_before = stats::thread_cpu();
            start_pumps();
            let started = Instant::now();
            offer(deps, first, &probe, rate).await?;
            (None, started, cpu_before)
        }
    };
    let timeout = Duration::from_secs(60).max(Duration::from_millis(n as u64));
    let all = probe.wait_all(timeout).await;
    let cpu = stats::thread_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.since(before));
    let drain = probe.last_handled_after(started);
    let peak_rss = stats::peak_rss();
    stop_pumps(&pumps, &shutdown, &hard_stop).await;
    if !all {
        tracing::warn!(
            handled = probe.done(),
            messages = n,
            "not every message was handled within {timeout:?}"
        );
    }
    let mut rows = Rows::default();
    for host in hosts {
        rows.add(rows_of(&host.store, &prefix).await?);
    }
    Ok(RunReport {
        messages: n,
        enqueue,
        drain,
        latency: probe.latencies(),
        handled: probe.done(),
        other_settles: probe.other(),
        succeeded_rows: rows.succeeded,
        fuel_per_job: rows.fuel_per_job,
        amount_sum: matches!(first.workload, Workload::Amounts).then_some(rows.amount_sum),
        expected_sum: first.workload.expected_sum(n),
        reruns: rows.reruns,
        peak_rss,
        cpu,
    })
}

/// Stops a run's pumps as a daemon's shutdown does: drain for up to 10 s,
/// then interrupt.
pub(super) async fn stop_pumps(
    pumps: &TaskTracker,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) {
    shutdown.cancel();
    pumps.close();
    if tokio::time::timeout(Duration::from_secs(10), pumps.wait())
        .await
        .is_err()
    {
        hard_stop.cancel();
        pumps.wait().await;
    }
}

/// Message `index` of the run.
fn message(host: &Host, probe: &Probe, index: usize) -> NewMessage {
    NewMessage {
        message: Message {
            id: probe.id(index),
            channel: host.sub.channel.clone(),
            kind: MessageKind::Command,
            headers: Vec::new(),
            body: host.workload.body(index),
        },
        visible_at: 0,
        expires_at: None,
    }
}

/// Publishes `count` messages in chunks, several chunks in flight (group
/// commit on the embedded queue; pipelined acks on JetStream).
async fn enqueue_all<T: Transport>(
    deps: &Deps<Timed<T>>,
    host: &Host,
    probe: &Probe,
    count: usize,
) -> anyhow::Result<()> {
    let (chunk, in_flight) = if deps.transport.uses_outbox() {
        (64, 64)
    } else {
        (500, 4)
    };
    let chunks: Vec<(usize, usize)> = (0..count)
        .step_by(chunk)
        .map(|start| (start, (start + chunk).min(count)))
        .collect();
    let mut results = futures_util::stream::iter(chunks)
        .map(|(from, to)| async move {
            let batch: Vec<NewMessage> = (from..to).map(|i| message(host, probe, i)).collect();
            let at = Instant::now();
            for i in from..to {
                probe.posted(i, at);
            }
            deps.transport.publish(batch).await
        })
        .buffer_unordered(in_flight);
    while let Some(result) = results.next().await {
        result.context("enqueueing")?;
    }
    Ok(())
}

/// Posts every message of the probe at `rate` per second: each millisecond,
/// the ones due by then, in one publish that does not hold up the next.
async fn offer<T: Transport>(
    deps: &Arc<Deps<Timed<T>>>,
    host: &Host,
    probe: &Arc<Probe>,
    rate: u32,
) -> anyhow::Result<()> {
    let count = probe.count();
    let began = Instant::now();
    let publishes = TaskTracker::new();
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < count {
        tick.tick().await;
        let due = ((began.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(count);
        if due <= sent {
            continue;
        }
        let batch: Vec<NewMessage> = (sent..due).map(|i| message(host, probe, i)).collect();
        for i in sent..due {
            probe.posted(
                i,
                began + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1))),
            );
        }
        sent = due;
        let deps = deps.clone();
        publishes.spawn(async move {
            if let Err(e) = deps.transport.publish(batch).await {
                tracing::error!(error = %e, "bench: publishing failed");
            }
        });
    }
    publishes.close();
    publishes.wait().await;
    Ok(())
}

/// What SQLite holds about a run's jobs afterwards.
#[derive(Default)]
struct Rows {
    succeeded: usize,
    fuel_per_job: f64,
    /// Sum of `$.amount` over the succeeded jobs' results.
    amount_sum: i64,
    /// State re-runs of the run's jobs: the sum and the most for one job.
    reruns: (u64, u64),
}

impl Rows {
    /// Adds another host's rows to these.
    fn add(&mut self, other: Rows) {
        let total = self.succeeded + other.succeeded;
        if total > 0 {
            self.fuel_per_job = (self.fuel_per_job * self.succeeded as f64
                + other.fuel_per_job * other.succeeded as f64)
                / total as f64;
        }
        self.succeeded = total;
        self.amount_sum += other.amount_sum;
        self.reruns = (
            self.reruns.0 + other.reruns.0,
            self.reruns.1.max(other.reruns.1),
        );
    }
}

/// How many of the run's jobs succeeded in SQLite, their mean fuel, and the
/// sum of the amounts their results carry.
async fn rows_of(store: &Store, prefix: &str) -> anyhow::Result<Rows> {
    let prefix = prefix.to_owned();
    let (rows, fuel, sum, reruns, most) = store
        .call(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*), COALESCE(AVG(fuel_used), 0),
                     COALESCE(SUM(CASE WHEN json_valid(result)
                         THEN CAST(json_extract(result, '$.amount') AS INTEGER) END), 0),
                     COALESCE(SUM(conflicts), 0), COALESCE(MAX(conflicts), 0)
                 FROM jobs
                 WHERE state = 'succeeded' AND substr(message_id, 1, ?2) = ?1",
                params![prefix, prefix.len() as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, f64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )?)
        })
        .await
        .context("reading the run's job rows")?;
    Ok(Rows {
        succeeded: usize::try_from(rows).unwrap_or(0),
        fuel_per_job: fuel,
        amount_sum: sum,
        reruns: (
            u64::try_from(reruns).unwrap_or(0),
            u64::try_from(most).unwrap_or(0),
        ),
    })
}
