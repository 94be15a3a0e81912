//! The traced drains' collector: an OTLP/HTTP receiver on a free loopback
//! port that decodes each export (the official protobuf types) and counts
//! the spans, so `sluice bench` can price `[otel]` on against off in the
//! same run and check the spans arrived.
//!
//! In-process rather than a real collector: the figure is the host's cost
//! of building and sending spans, not a collector's; decoding every request
//! keeps the receiving side honest (a sink that only drops bytes would
//! hide a malformed export).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

/// A running receiver; stops when dropped.
pub struct Sink {
    /// Its base URL (`http://127.0.0.1:PORT`), for `[otel] endpoint`.
    pub endpoint: String,
    spans: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl Sink {
    /// Binds a free loopback port and serves `POST /v1/traces`.
    pub async fn start() -> anyhow::Result<Sink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let count = spans.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let count = count.clone();
                    async move {
                        let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
                            return Err(axum::http::StatusCode::BAD_REQUEST);
                        };
                        let n = request
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .map(|s| s.spans.len() as u64)
                            .sum::<u64>();
                        count.fetch_add(n, Ordering::Relaxed);
                        Ok((
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        ))
                    }
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        Ok(Sink {
            endpoint,
            spans,
            stop,
        })
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
