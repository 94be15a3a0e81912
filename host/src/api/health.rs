//! Probes and metrics.
//!
//! `/healthz` says the process answers (liveness: restart it if not).
//! `/readyz` says it can do its job (readiness: send it traffic): the store
//! commits a write, and on JetStream the client is connected. `/metrics`
//! is Prometheus text: the in-memory counters (`crate::metrics`) plus what
//! the store knows when scraped (jobs by channel and state, dead letters,
//! outbox lag), so the numbers hold across restarts.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, ApiState};
use crate::message::now_ms;
use crate::metrics::escape;
use crate::store::JobState;
use crate::transport::Transport;

/// `GET /healthz`.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when ready, else 503 with what is wrong.
pub async fn readyz<T: Transport>(State(state): State<Arc<ApiState<T>>>) -> Response {
    let mut problems = Vec::new();
    let store = match state.deps.store.probe_write().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            // The details go to the log, never to an unauthenticated client.
            tracing::error!(error = %e, "readyz: the store cannot commit a write");
            problems.push("store: cannot commit a write (see the daemon log)".to_owned());
            "failing".to_owned()
        }
    };
    let nats = state.jetstream.as_ref().map(|js| {
        let connection = js.client().connection_state();
        if connection != async_nats::connection::State::Connected {
            problems.push(format!("nats: {connection}"));
        }
        connection.to_string()
    });
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if problems.is_empty() { "ready" } else { "not ready" },
        "store": store,
        "nats": nats,
        "problems": problems,
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics`.
pub async fn metrics<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
) -> Result<Response, ApiError> {
    let deps = &state.deps;
    let census = deps.store.census().await?;
    let lag = deps.store.outbox_lag().await?;
    let mut out = String::new();
    out.push_str(
        "# HELP sluice_jobs Jobs waiting, running and dead by channel and state (each stops at 10000: \"at least\").\n# TYPE sluice_jobs gauge\n",
    );
    let mut dead = 0;
    for c in &census.channels {
        dead += c.dead;
        let channel = escape(&c.channel);
        for (job_state, n) in [
            (JobState::Queued, c.queued),
            (JobState::Scheduled, c.scheduled),
            (JobState::Retrying, c.retrying),
            (JobState::Running, c.running),
            (JobState::Dead, c.dead),
        ] {
            let _ = writeln!(
                out,
                "sluice_jobs{{channel=\"{channel}\",state=\"{job_state}\"}} {n}"
            );
        }
    }
    let flows = deps.control.flow_census();
    if !flows.is_empty() {
        out.push_str(
            "# HELP sluice_jobs_waiting Due jobs their handler's flow rules hold on this host (embedded), by reason.\n# TYPE sluice_jobs_waiting gauge\n",
        );
        for (handler, channel, (conc, rate), _) in &flows {
            let (handler, channel) = (escape(handler), escape(channel));
            for (reason, n) in [("concurrency", conc), ("rate limit", rate)] {
                let _ = writeln!(
                    out,
                    "sluice_jobs_waiting{{channel=\"{channel}\",handler=\"{handler}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP sluice_jobs_turned_back_total Deliveries this host turned back to wait (JetStream), by reason.\n# TYPE sluice_jobs_turned_back_total counter\n",
        );
        for (handler, channel, _, (conc, rate)) in &flows {
            let (handler, channel) = (escape(handler), escape(channel));
            for (reason, n) in [("concurrency", conc), ("rate limit", rate)] {
                let _ = writeln!(
                    out,
                    "sluice_jobs_turned_back_total{{channel=\"{channel}\",handler=\"{handler}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
    }
    if let Some(offset) = state.cluster.as_ref().and_then(|c| c.hosts.clock_offset()) {
        let _ = writeln!(
            out,
            "# HELP sluice_clock_offset_seconds The NATS server's clock minus this host's, as its last presence write measured it (positive: the server is ahead; past 2 s the host warns).\n\
             # TYPE sluice_clock_offset_seconds gauge\nsluice_clock_offset_seconds {offset}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_dead_letters Dead letters waiting for a replay.\n\
         # TYPE sluice_dead_letters gauge\nsluice_dead_letters {dead}"
    );
    let oldest_age = lag.oldest_ms.map_or(0.0, |at| {
        (now_ms().saturating_sub(at).max(0)) as f64 / 1000.0
    });
    let _ = writeln!(
        out,
        "# HELP sluice_outbox_pending Outbox rows committed but not yet published.\n\
         # TYPE sluice_outbox_pending gauge\nsluice_outbox_pending {}\n\
         # HELP sluice_outbox_oldest_pending_seconds Age of the oldest unpublished outbox row.\n\
         # TYPE sluice_outbox_oldest_pending_seconds gauge\nsluice_outbox_oldest_pending_seconds {oldest_age}\n\
         # HELP sluice_outbox_poisoned Outbox rows set aside because the broker can never take them as they are.\n\
         # TYPE sluice_outbox_poisoned gauge\nsluice_outbox_poisoned {}",
        lag.pending, lag.poisoned
    );
    let _ = writeln!(
        out,
        "# HELP sluice_reloads_total Plugin sets swapped in by hot reload since start.\n\
         # TYPE sluice_reloads_total counter\nsluice_reloads_total {}",
        deps.registry.swaps()
    );
    let paused = deps.control.paused();
    let _ = writeln!(
        out,
        "# HELP sluice_channels_paused Channels paused by an operator.\n\
         # TYPE sluice_channels_paused gauge\nsluice_channels_paused {}",
        paused.len()
    );
    if let Some(s) = deps.control.sandbox() {
        let _ = writeln!(
            out,
            "# HELP sluice_sandbox_calls_budget Sandboxed calls that may run at once ([sandbox] calls).\n\
             # TYPE sluice_sandbox_calls_budget gauge\nsluice_sandbox_calls_budget {}\n\
             # HELP sluice_sandbox_calls_running Sandboxed calls running now.\n\
             # TYPE sluice_sandbox_calls_running gauge\nsluice_sandbox_calls_running {}\n\
             # HELP sluice_sandbox_calls_waiting Calls waiting for the budget.\n\
             # TYPE sluice_sandbox_calls_waiting gauge\nsluice_sandbox_calls_waiting {}\n\
             # HELP sluice_sandbox_calls_peak Most sandboxed calls at once since start.\n\
             # TYPE sluice_sandbox_calls_peak gauge\nsluice_sandbox_calls_peak {}\n\
             # HELP sluice_sandbox_warm_slots Idle pool slots kept resident for the next call.\n\
             # TYPE sluice_sandbox_warm_slots gauge\nsluice_sandbox_warm_slots {}\n\
             # HELP sluice_sandbox_idle_resident_bytes Bytes idle pool slots keep resident.\n\
             # TYPE sluice_sandbox_idle_resident_bytes gauge\nsluice_sandbox_idle_resident_bytes {}",
            s.calls.budget,
            s.calls.running,
            s.calls.waiting,
            s.calls.peak,
            s.warm_slots,
            s.idle_resident_bytes
        );
    }
    deps.control.metrics.render(&mut out);
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response())
}
