//! Operator endpoints: dead letters (list, replay), the outbox (list,
//! repost: poison rows show here), plugins, and pausing or resuming a
//! channel (Brighter's stop and start of a single channel).
//!
//! Replay goes through the store like `sluice dlq replay`; on JetStream the
//! job is also re-published to its handler, because there the stream, not
//! the jobs table, is the queue.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::store::{JobFilter, JobState, OutboxFilter};
use crate::transport::Transport;

/// `GET /v1/dead-letters` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadParams {
    channel: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// `GET /v1/dead-letters?channel=&limit=&before=`: dead jobs, newest
/// first, with their errors.
pub async fn dead_letters<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    params: Result<Query<DeadParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    super::jobs::page(
        &state,
        Some(JobState::Dead),
        p.channel,
        p.limit,
        p.before,
        "/v1/dead-letters",
    )
    .await
}

/// Puts one dead letter back; false when `id` is not one.
async fn replay_one<T: Transport>(state: &ApiState<T>, id: &str) -> Result<bool, ApiError> {
    let store = &state.deps.store;
    // On JetStream the replay and the message that carries it commit
    // together (the relay publishes it), so a failed publish loses nothing.
    let replayed = match &state.jetstream {
        Some(js) => js.replay(id).await.map_err(|e| {
            tracing::error!(job_id = %id, error = %e, "api: replay failed");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("job {id} could not be replayed; see the daemon log"),
            )
        })?,
        None => store.replay(id).await?,
    };
    if replayed {
        state.deps.control.changed(id);
    }
    Ok(replayed)
}

/// `POST /v1/dead-letters/{id}/replay`.
pub async fn replay<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !replay_one(&state, &id).await? {
        return Err(match state.deps.store.job(&id).await? {
            None => ApiError::not_found(format!("no job {id}")),
            Some(j) => ApiError::conflict(format!("job {id} is {}, not a dead letter", j.state)),
        });
    }
    tracing::info!(job_id = %id, "dead letter replayed through the API");
    Ok(Json(json!({ "replayed": [id] })))
}

/// `POST /v1/dead-letters/replay`: every dead letter.
pub async fn replay_all<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
) -> Result<Json<Value>, ApiError> {
    let dead = state
        .deps
        .store
        .jobs(JobFilter {
            state: Some(JobState::Dead),
            channel: None,
            limit: usize::MAX >> 1,
        })
        .await?;
    let mut replayed = Vec::new();
    for job in dead {
        if replay_one(&state, &job.id).await? {
            replayed.push(job.id);
        }
    }
    tracing::info!(
        count = replayed.len(),
        "dead letters replayed through the API"
    );
    Ok(Json(json!({ "replayed": replayed })))
}

/// `GET /v1/plugins`: what the registry serves now, and each plugin
/// file's last load error.
pub async fn plugins<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
) -> Result<Json<Value>, ApiError> {
    let set = state.deps.registry.current();
    let split = state.cluster.as_ref().map(|c| c.hosts.split());
    let split_plugins: &[String] = split.as_ref().map_or(&[], |s| &s.plugins);
    let plugins: Vec<Value> = set
        .handlers
        .values()
        .chain(set.mappers.values())
        .map(|p| {
            let info = p.info();
            json!({
                "name": info.name,
                "version": info.version,
                "kind": info.kind.as_str(),
                "channels": info.channels,
                "limits": p.limits(),
                "asked": info.limits,
                "hash": p.hash(),
                "state_split": split_plugins.contains(&info.name),
            })
        })
        .collect();
    let files: Vec<Value> = set
        .files
        .iter()
        .map(|(path, status)| {
            json!({
                "path": path.display().to_string(),
                "plugin": status.name(),
                "error": status.error(),
            })
        })
        .collect();
    // Where state lives, and whether other hosts split it (JetStream).
    let state_view = match (&state.cluster, split) {
        (Some(cluster), Some(split)) => json!({
            "shared": cluster.hosts.shares_state(),
            "hosts": split.hosts,
            "not_shared": split.not_shared,
            "split": split.plugins,
        }),
        _ => json!({ "shared": false, "hosts": 1, "not_shared": 1, "split": [] }),
    };
    Ok(Json(
        json!({ "plugins": plugins, "files": files, "state": state_view }),
    ))
}

/// `GET /v1/channels`: every channel with a handler here, its handlers,
/// and whether it is paused.
pub async fn channels<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
) -> Result<Json<Value>, ApiError> {
    let set = state.deps.registry.current();
    let mut by_channel: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for sub in set.subscriptions() {
        by_channel
            .entry(sub.channel)
            .or_default()
            .push(sub.consumer);
    }
    let control = &state.deps.control;
    for channel in control.paused() {
        by_channel.entry(channel).or_default();
    }
    let channels: Vec<Value> = by_channel
        .into_iter()
        .map(|(channel, handlers)| {
            json!({
                "channel": channel,
                "handlers": handlers,
                "paused": control.is_paused(&channel),
                "waiting_for_mapper": set.paused_channels.contains(&channel),
            })
        })
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

/// `POST /v1/channels/{channel}/pause`: the channel's pumps stop fetching;
/// running jobs finish; its messages stay queued.
pub async fn pause<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(channel): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super::check_channel(&channel)?;
    let changed = state.deps.control.pause(&channel);
    if changed {
        tracing::info!(%channel, "channel paused through the API");
    }
    Ok(Json(
        json!({ "channel": channel, "paused": true, "changed": changed }),
    ))
}

/// `POST /v1/channels/{channel}/resume`.
pub async fn resume<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(channel): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super::check_channel(&channel)?;
    let changed = state.deps.control.resume(&channel);
    if changed {
        tracing::info!(%channel, "channel resumed through the API");
    }
    Ok(Json(
        json!({ "channel": channel, "paused": false, "changed": changed }),
    ))
}

/// `GET /v1/outbox` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxParams {
    /// pending, poisoned or sent (default: all).
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/outbox?state=pending|poisoned|sent&limit=`: outbox rows (on
/// JetStream, the posts committed jobs made), newest first, with why the
/// broker refused a poison row.
pub async fn outbox<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    params: Result<Query<OutboxParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = match p.state.as_deref() {
        None => OutboxFilter::All,
        Some("pending") => OutboxFilter::Pending,
        Some("poisoned") => OutboxFilter::Poisoned,
        Some("sent") => OutboxFilter::Sent,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state={other:?}: use pending, poisoned or sent"
            )));
        }
    };
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = state.deps.store.outbox_list(filter, limit).await?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "seq": r.seq, "id": r.id, "channel": r.channel, "handler": r.consumer,
                "kind": r.message.kind.as_str(), "status": r.status(), "attempts": r.attempts,
                "error": r.error, "visible_at": r.visible_at, "sent_at": r.sent_at,
                "failed_at": r.failed_at,
            })
        })
        .collect();
    Ok(Json(json!({ "rows": rows })))
}

/// `POST /v1/outbox/{id}/repost`: queue a row (by id or seq) for publishing
/// again, a poison row included.
pub async fn repost<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.deps.store.outbox_repost(&id).await? {
        return Err(ApiError::not_found(format!("no outbox row {id}")));
    }
    tracing::info!(row = %id, "outbox row queued for publishing again through the API");
    Ok(Json(json!({ "reposted": id })))
}

/// `GET /v1/cron`: each `[[cron]]` entry with its next fire times and
/// last tick (from the records every host shares on JetStream).
pub async fn cron<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
) -> Result<Json<Value>, ApiError> {
    let entries = &state.deps.config.cron;
    let records = match &state.jetstream {
        Some(js) => crate::cron::records_via(js.client(), entries).await,
        None => {
            use crate::cron::Ledger as _;
            crate::cron::StoreLedger::new(state.deps.store.clone(), None)
                .records(entries)
                .await
        }
    }
    .map_err(|e| {
        tracing::error!(error = %e, "api: cannot read cron records");
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "cron records cannot be read now; see the daemon log".to_owned(),
        )
    })?;
    let views = crate::cron::views(entries, &records, crate::message::now_ms());
    Ok(Json(json!({ "cron": views })))
}
