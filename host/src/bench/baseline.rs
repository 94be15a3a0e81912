//! Baselines measured in the same run, so Sluice's figures can be read as
//! ratios on whatever box they ran on:
//! - **raw JetStream**: publish N messages to a stream of their own on the
//!   same server, then consume them with a plain async-nats pull consumer
//!   (batched pulls) and a native Rust handler that does the plugin's work
//!   (parse the body, read the amount), acking each one: what a hand-written
//!   worker with no sandbox and no SQLite would do;
//! - **sandbox cost**: one `Plugin::handle` (instantiate from the pool,
//!   call, drop the store) with a no-op state source, against a native
//!   function doing the handler's trivial work.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::stats::Percentiles;
use super::workload::Workload;
use crate::message::Request;
use crate::runtime::{JobContext, Plugin, StateFuture, StateSource};

/// The raw consumer's stream and subject.
const RAW_STREAM: &str = "SLUICE_BENCH_RAW";
const RAW_SUBJECT: &str = "sluice-bench-raw";
/// Messages per pull request of the raw consumer.
pub const RAW_BATCH: usize = 256;

/// What the raw JetStream baseline measured.
#[derive(Debug, Clone, Copy)]
pub struct RawReport {
    /// Publishing N with pipelined acks.
    pub publish: Duration,
    /// Consuming and acking N.
    pub consume: Duration,
}

/// Publishes the workload's first `count` messages to a stream of its own,
/// then consumes and acks them with a native handler, checking that the
/// amounts it read add up. The stream is deleted afterwards.
pub async fn raw_jetstream(
    url: &str,
    workload: &Workload,
    count: usize,
) -> anyhow::Result<RawReport> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(RAW_STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: RAW_STREAM.into(),
            subjects: vec![RAW_SUBJECT.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the raw baseline stream")?;
    let began = Instant::now();
    let mut acks = Vec::with_capacity(1024);
    for i in 0..count {
        let ack = js
            .publish(RAW_SUBJECT, bytes::Bytes::from(workload.body(i)))
            .await
            .context("raw publish")?;
        acks.push(ack);
        if acks.len() == 1024 {
            for a in acks.drain(..) {
                a.await.context("raw publish ack")?;
            }
        }
    }
    for a in acks {
        a.await.context("raw publish ack")?;
    }
    let publish = began.elapsed();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .context("creating the raw baseline consumer")?;
    let began = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(RAW_BATCH)
        .messages()
        .await
        .context("raw pull")?;
    let (mut seen, mut sum) = (0, 0);
    while seen < count {
        let Some(msg) = messages.next().await else {
            break;
        };
        let msg = msg.map_err(|e| anyhow::anyhow!("raw pull: {e}"))?;
        sum += workload.native_handle(&msg.payload);
        msg.ack()
            .await
            .map_err(|e| anyhow::anyhow!("raw ack: {e}"))?;
        seen += 1;
    }
    client.flush().await.context("flushing raw acks")?;
    let consume = began.elapsed();
    drop(messages);
    let _ = js.delete_stream(RAW_STREAM).await;
    anyhow::ensure!(seen == count, "raw consumer saw {seen} of {count} messages");
    if let Some(expected) = workload.expected_sum(count) {
        anyhow::ensure!(
            sum == expected,
            "raw consumer's amounts add up to {sum}, not {expected}"
        );
    }
    Ok(RawReport { publish, consume })
}

/// State that is always empty: the sandbox baseline measures the sandbox,
/// not SQLite.
struct NoState;

impl StateSource for NoState {
    fn get(&self, _key: &str) -> StateFuture<'_> {
        Box::pin(async { Ok((None, 0)) })
    }
}

/// What the sandbox baseline measured.
#[derive(Debug, Clone, Copy)]
pub struct SandboxReport {
    /// One `Plugin::handle`.
    pub sandbox: Percentiles,
    /// One native call.
    pub native: Percentiles,
    /// Fuel one call used.
    pub fuel: u64,
    /// Calls that did not succeed.
    pub failed: usize,
}

/// Times `calls` sandboxed calls of `plugin` on `request` (after a warm-up)
/// and as many native calls.
pub async fn sandbox(
    plugin: &Plugin,
    channel: &str,
    request: &Request,
    workload: &Workload,
    calls: usize,
) -> SandboxReport {
    let state: Arc<dyn StateSource> = Arc::new(NoState);
    let mut sandbox = Vec::with_capacity(calls);
    let (mut fuel, mut failed) = (0, 0);
    for i in 0..calls + calls / 10 + 10 {
        let ctx = JobContext {
            job_id: format!("bench-sandbox-{i}"),
            message_id: format!("bench-sandbox-{i}"),
            channel: channel.to_owned(),
            attempt: 1,
            headers: Vec::new(),
            cursor: None,
        };
        let began = Instant::now();
        let report = plugin
            .handle(
                ctx,
                request.clone(),
                state.clone(),
                CancellationToken::new(),
            )
            .await;
        let took = began.elapsed();
        // The first calls warm the pool slot and caches.
        if i >= calls / 10 + 10 {
            sandbox.push(nanos(took));
            fuel = report.fuel_used;
            failed += usize::from(report.result.is_err());
        }
    }
    let mut native = Vec::with_capacity(calls);
    let body = request.body.as_bytes();
    for i in 0..calls + calls / 10 {
        let began = Instant::now();
        black_box(workload.native_handle(black_box(body)));
        if i >= calls / 10 {
            native.push(nanos(began.elapsed()));
        }
    }
    SandboxReport {
        sandbox: Percentiles::of_nanos(&mut sandbox),
        native: Percentiles::of_nanos(&mut native),
        fuel,
        failed,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
