//! Traces across chains of jobs: the W3C `traceparent` every message
//! carries (`context`), and, when `[otel] endpoint` is set, a span per job
//! attempt exported over OTLP (`spans`).
//!
//! Off by default. When off, the message path pays for nothing but the
//! header work in `context` (two header operations for a call that posts):
//! the pump asks [`Spans`] for a clock only if an exporter is configured.

mod context;
mod spans;

pub use context::{
    BadTraceParent, TRACEPARENT, TraceParent, from_headers, inherit, job_span_id, job_trace, set,
};
pub use spans::{JobCost, JobSpan, OtelError, OtelSettings, Phase, Spans, conflict, mark};
