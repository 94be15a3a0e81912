//! Spans per job, exported over OTLP/HTTP when `[otel] endpoint` is set.
//!
//! One span per attempt (`sluice.job`, kind consumer) with the message's
//! `traceparent` as its parent and the attempt's derived span id (the one
//! its posts point at, `context::job_trace`), and one child span per phase:
//! `receive` (the pump taking the delivery), `map` (message to request),
//! `handle` (the sandboxed call), `commit` (mapping its posts and the store
//! transaction), `settle` (ack/nak on the transport). Attributes: job id,
//! message id, channel, plugin, version, attempt, fuel, state conflicts,
//! outcome.
//!
//! A call re-run because state changed under it (`crate::state`) stays in
//! its `handle` phase: `handle` ends when the last run returns, and each
//! re-run is a `state conflict` event on it (attribute `sluice.rerun`, the
//! re-run's number), so a contended job shows one long `handle` with its
//! re-runs marked, not a phase per run.
//!
//! The pump records instants as it goes ([`JobSpan::mark`]) and hands the
//! whole job over once it is settled; spans are built then, with explicit
//! start and end times, so nothing is held open across `.await` and a
//! disabled exporter costs one `Option` check per job. Export is the
//! OpenTelemetry SDK's batch processor on its own thread (bounded queue:
//! when a collector is slow spans are dropped, the pump never waits).

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use super::context::{TraceParent, job_trace};
use crate::store::ClaimedJob;

/// `[otel]` as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelSettings {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`); spans go to
    /// `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// `service.name` on every span.
    pub service_name: String,
}

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("[otel]: cannot export to {endpoint}: {reason}")]
pub struct OtelError {
    endpoint: String,
    reason: String,
}

/// The phases of one job, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The pump took the delivery.
    Receive,
    /// Message to request.
    Map,
    /// The sandboxed call.
    Handle,
    /// Mapping the call's posts and the store transaction.
    Commit,
    /// Ack/nak on the transport.
    Settle,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Receive => "receive",
            Phase::Map => "map",
            Phase::Handle => "handle",
            Phase::Commit => "commit",
            Phase::Settle => "settle",
        }
    }
}

/// The daemon's span exporter.
pub struct Spans {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spans")
    }
}

impl Spans {
    /// Builds the OTLP exporter and its batch processor.
    pub fn start(settings: &OtelSettings) -> Result<Spans, OtelError> {
        let base = settings.endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        };
        let exporter = {
            use opentelemetry_otlp::WithExportConfig as _;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url.clone())
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| OtelError {
                    endpoint: url.clone(),
                    reason: e.to_string(),
                })?
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(65_536)
            .with_max_export_batch_size(2_048)
            .with_scheduled_delay(Duration::from_secs(2))
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sluice");
        tracing::info!(endpoint = %url, "exporting traces over OTLP");
        Ok(Spans { provider, tracer })
    }

    /// A clock for one attempt of a job, started now.
    pub fn job(&self) -> JobSpan {
        JobSpan {
            start: SystemTime::now(),
            marks: Vec::with_capacity(5),
            conflicts: Vec::new(),
        }
    }

    /// Exports one settled attempt of `job` with its attributes.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_job(
        &self,
        clock: JobSpan,
        job: &ClaimedJob,
        plugin: &str,
        version: &str,
        cost: JobCost,
        outcome: &str,
        error: Option<&str>,
    ) {
        let (parent, trace) = job_trace(
            &job.message.headers,
            &job.message.id,
            &job.consumer,
            job.cursor.as_deref(),
            job.attempt,
        );
        let attributes = vec![
            KeyValue::new("sluice.job_id", job.job_id.clone()),
            KeyValue::new("sluice.message_id", job.message.id.clone()),
            KeyValue::new("sluice.channel", job.message.channel.clone()),
            KeyValue::new("sluice.plugin", plugin.to_owned()),
            KeyValue::new("sluice.plugin_version", version.to_owned()),
            KeyValue::new("sluice.attempt", i64::from(job.attempt)),
            KeyValue::new("sluice.fuel", i64::try_from(cost.fuel).unwrap_or(i64::MAX)),
            KeyValue::new("sluice.conflicts", i64::from(cost.conflicts)),
        ];
        self.finish(clock, parent, trace, attributes, outcome, error);
    }

    /// Exports one finished job: `trace` is the job's own span (its trace
    /// and derived span id), `parent` the span its message came from.
    fn finish(
        &self,
        job: JobSpan,
        parent: Option<TraceParent>,
        trace: TraceParent,
        attributes: Vec<KeyValue>,
        outcome: &str,
        error: Option<&str>,
    ) {
        let end = SystemTime::now();
        let parent_cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id),
                SpanId::from_bytes(p.span_id),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let mut attributes = attributes;
        attributes.push(KeyValue::new("sluice.outcome", outcome.to_owned()));
        let mut span = self
            .tracer
            .span_builder("sluice.job")
            .with_kind(SpanKind::Consumer)
            .with_trace_id(TraceId::from_bytes(trace.trace_id))
            .with_span_id(SpanId::from_bytes(trace.span_id))
            .with_start_time(job.start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent_cx);
        if let Some(e) = error {
            span.set_status(Status::error(e.to_owned()));
        }
        let job_cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut from = job.start;
        let mut conflicts = job.conflicts.into_iter().peekable();
        for (phase, at) in job.marks {
            let mut child = self
                .tracer
                .span_builder(phase.name())
                .with_kind(SpanKind::Internal)
                .with_start_time(from)
                .start_with_context(&self.tracer, &job_cx);
            if phase == Phase::Handle {
                for (rerun, when) in conflicts.by_ref() {
                    let rerun = KeyValue::new("sluice.rerun", i64::from(rerun));
                    child.add_event_with_timestamp("state conflict", when, vec![rerun]);
                }
            }
            child.end_with_timestamp(at);
            from = at;
        }
        span.end_with_timestamp(end);
    }

    /// Sends what is queued and stops the exporter (bounded: a collector
    /// that does not answer cannot hold up the daemon's exit).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "traces: the last spans may not have been exported");
        }
    }
}

/// Records that `phase` ended now, when spans are exported (`clock` is
/// `None` otherwise, and this does nothing).
pub fn mark(clock: &mut Option<JobSpan>, phase: Phase) {
    if let Some(c) = clock {
        c.mark(phase);
    }
}

/// Records a state conflict re-run (the `rerun`th) when spans are
/// exported.
pub fn conflict(clock: &mut Option<JobSpan>, rerun: u32) {
    if let Some(c) = clock {
        c.conflicts.push((rerun, SystemTime::now()));
    }
}

/// What one attempt cost, for its span's attributes.
#[derive(Debug, Clone, Copy)]
pub struct JobCost {
    /// Fuel over every run of the call.
    pub fuel: u64,
    /// Re-runs because state changed under the call (and a conflict at the
    /// writer).
    pub conflicts: u32,
}

/// The instants one job's phases ended at.
#[derive(Debug)]
pub struct JobSpan {
    start: SystemTime,
    marks: Vec<(Phase, SystemTime)>,
    /// State conflict re-runs: number and when.
    conflicts: Vec<(u32, SystemTime)>,
}

impl JobSpan {
    /// `phase` ended now. A phase marked again (`handle`, when the call
    /// runs again after a state conflict) ends at its last mark.
    pub fn mark(&mut self, phase: Phase) {
        let now = SystemTime::now();
        match self.marks.last_mut() {
            Some((last, at)) if *last == phase => *at = now,
            _ => self.marks.push((phase, now)),
        }
    }
}
