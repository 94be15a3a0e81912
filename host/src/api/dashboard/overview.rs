//! `GET /v1/dashboard/overview?minutes=15`: everything the overview and
//! channels pages show, in one request: per channel its handlers, pause
//! state, waiting/running/dead counts (from the store, within the census
//! budget: `at_least` names the counts that are floors), the jobs its
//! flow rules hold on this host, and outcomes over time (this daemon's, in
//! memory); the in-flight calls, outbox lag and per-handler totals.
//!
//! `GET /v1/dashboard/channels`: just the channels' names (the filters of
//! the job and dead-letter pages), without counting anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ApiError, ApiState};
use crate::message::now_ms;
use crate::metrics::{BUCKET_MS, BUCKETS, Bucket};
use crate::store::{CENSUS_BUDGET, COUNT_CAP, ChannelCensus};
use crate::transport::Transport;

/// Query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewParams {
    /// How far back the plots go, 1 to 60 minutes (default 15).
    minutes: Option<u32>,
}

/// One channel as the overview shows it.
#[derive(Debug, Serialize)]
struct ChannelView {
    channel: String,
    handlers: Vec<String>,
    paused: bool,
    waiting_for_mapper: bool,
    #[serde(flatten)]
    counts: ChannelCensus,
    /// Due jobs its handlers' flow rules hold on this host (embedded):
    /// `[concurrency, rate limit]`, summed over its handlers.
    flow_waiting: [usize; 2],
    /// `[done, failed, dead, other]` per bucket, oldest first.
    points: Vec<[u64; 4]>,
}

/// `GET /v1/dashboard/overview`.
pub async fn overview<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    params: Result<Query<OverviewParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let minutes = p.minutes.unwrap_or(15);
    if !(1..=60).contains(&minutes) {
        return Err(ApiError::bad_request("minutes must be between 1 and 60"));
    }
    let buckets = (minutes as usize * 60_000 / BUCKET_MS as usize).min(BUCKETS);
    let deps = &state.deps;
    let census = deps.store.census_within(CENSUS_BUDGET).await?;
    let now = now_ms();
    let series = deps.control.metrics.series.snapshot(now, buckets);
    let set = deps.registry.current();
    let mut channels: BTreeMap<String, ChannelView> = BTreeMap::new();
    let empty = |name: &str| ChannelView {
        channel: name.to_owned(),
        handlers: Vec::new(),
        paused: deps.control.is_paused(name),
        waiting_for_mapper: set.paused_channels.contains(name),
        counts: ChannelCensus {
            channel: name.to_owned(),
            ..ChannelCensus::default()
        },
        flow_waiting: [0; 2],
        points: vec![[0; 4]; buckets],
    };
    for sub in set.subscriptions() {
        channels
            .entry(sub.channel.clone())
            .or_insert_with(|| empty(&sub.channel))
            .handlers
            .push(sub.consumer);
    }
    for paused in deps.control.paused() {
        channels
            .entry(paused.clone())
            .or_insert_with(|| empty(&paused));
    }
    for counts in census.channels {
        let name = counts.channel.clone();
        channels
            .entry(name.clone())
            .or_insert_with(|| empty(&name))
            .counts = counts;
    }
    for (channel, points) in &series {
        channels
            .entry(channel.clone())
            .or_insert_with(|| empty(channel))
            .points = points
            .iter()
            .map(|b: &Bucket| [b.done, b.failed, b.dead, b.other])
            .collect();
    }
    for (_, channel, (concurrency, rate), _) in deps.control.flow_census() {
        let view = channels
            .entry(channel.clone())
            .or_insert_with(|| empty(&channel));
        view.flow_waiting[0] += concurrency;
        view.flow_waiting[1] += rate;
    }
    let first_bucket = series.values().next().and_then(|p| p.first()).map_or(
        now - now.rem_euclid(BUCKET_MS) - BUCKET_MS * (buckets as i64 - 1),
        |b| b.start_ms,
    );
    let handlers = deps.control.metrics.handler_totals();
    let load_errors = set.errors().len();
    Ok(Json(json!({
        "now": now,
        "transport": if state.jetstream.is_some() { "jetstream" } else { "embedded" },
        "in_flight": deps.control.metrics.in_flight(),
        "count_cap": COUNT_CAP,
        "bucket_ms": BUCKET_MS,
        "first_bucket_ms": first_bucket,
        "channels": channels.into_values().collect::<Vec<_>>(),
        "more_channels": census.more_channels,
        "outbox_pending": census.outbox_pending,
        "outbox_oldest_ms": census.outbox_oldest_ms,
        "handlers": handlers,
        "plugins": set.handlers.len() + set.mappers.len(),
        "load_errors": load_errors,
        "reloads": deps.registry.swaps(),
    })))
}

/// `GET /v1/dashboard/channels`: every channel a page may filter by (served
/// by a handler, paused, or with jobs in the store), by name.
pub async fn channels<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
) -> Result<Json<Value>, ApiError> {
    let deps = &state.deps;
    let (stored, more) = deps.store.channel_names().await?;
    let mut names: std::collections::BTreeSet<String> = stored.into_iter().collect();
    names.extend(
        deps.registry
            .current()
            .subscriptions()
            .into_iter()
            .map(|s| s.channel),
    );
    names.extend(deps.control.paused());
    Ok(Json(json!({ "channels": names, "more_channels": more })))
}
