//! Job status, result, listing and cancel: the polling half of
//! asynchronous request-reply.
//!
//! A client polls `GET /v1/jobs/{id}` (with `Retry-After` telling it how
//! often) until the job is final; a succeeded job answers `303 See Other`
//! so the client follows to its result. The estimate is the simplest one
//! that is honest about what the host knows: elapsed time scaled by the
//! progress the handler last committed, and none without progress.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::message::now_ms;
use crate::store::{Cancel, JobFilter, JobRecord, JobState};
use crate::transport::Transport;

/// Largest page `GET /v1/jobs` returns.
const MAX_PAGE: usize = 1000;

/// How long `DELETE` waits for an interrupted job to record its end.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Message id (the `Idempotency-Key` when one was given).
    pub message_id: String,
    /// Channel.
    pub channel: String,
    /// Handler plugin; empty while no handler is known for the channel.
    pub handler: String,
    /// command | event.
    pub kind: String,
    /// queued, scheduled, running, succeeded, retrying, dead, cancelled,
    /// expired.
    pub state: JobState,
    /// Attempts at the current slice.
    pub attempts: u32,
    /// Continuation slices committed.
    pub slices: u32,
    /// Last committed progress, 0..=100.
    pub progress: Option<u8>,
    /// The note that came with it.
    pub progress_note: Option<String>,
    /// Milliseconds to completion, from elapsed time and progress.
    pub estimate_ms: Option<i64>,
    /// Whether a result is recorded (`GET /v1/jobs/{id}/result`).
    pub has_result: bool,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Version of the plugin that last ran it.
    pub plugin_version: Option<String>,
    /// Fuel used over every call.
    pub fuel_used: u64,
    /// Times replayed from the dead letters.
    pub replays: u32,
    /// Times its call ran again because state it read changed under it.
    #[serde(default)]
    pub conflicts: u32,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the first start.
    pub started_at: Option<i64>,
    /// Unix ms of the end.
    pub finished_at: Option<i64>,
    /// Unix ms of the last change.
    pub updated_at: i64,
    /// Unix ms from which it may run.
    pub visible_at: i64,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
    /// The cron tick that posted it (`NAME@INSTANT`), if a `[[cron]]`
    /// entry did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Why a queued job is not running yet, when its handler's flow rules
    /// hold it (`waiting: concurrency KEY`, `waiting: rate limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Its uniqueness key (`sluice-unique`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<String>,
    /// Its debounce key (`sluice-debounce`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<String>,
    /// The handler's result (kept out of the status; see `/result`).
    #[serde(skip)]
    pub result: Option<String>,
}

impl JobView {
    /// The view of a stored job, with the estimate as of `now`.
    pub fn of(job: JobRecord, now: i64) -> JobView {
        JobView {
            estimate_ms: estimate(&job, now),
            cron: crate::cron::tick_of(&job.headers).map(str::to_owned),
            unique: crate::message::options::unique(&job.headers).map(|u| u.key),
            debounce: crate::message::options::debounce(&job.headers).map(|(k, _)| k),
            has_result: job.result.is_some(),
            id: job.id,
            message_id: job.message_id,
            channel: job.channel,
            handler: job.consumer,
            kind: job.kind,
            state: job.state,
            attempts: job.attempts,
            slices: job.slices,
            progress: job.progress,
            progress_note: job.progress_note,
            last_error: job.last_error,
            plugin_version: job.plugin_version,
            fuel_used: job.fuel_used,
            replays: job.replays,
            conflicts: job.conflicts,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            updated_at: job.updated_at,
            visible_at: job.visible_at,
            expires_at: job.expires_at,
            waiting: None,
            result: job.result,
        }
    }

    /// [`JobView::of`] with why it waits, as `control` sees it.
    pub fn seen_by(job: JobRecord, now: i64, control: &crate::pump::Control) -> JobView {
        let waiting = control.waiting(&job);
        JobView {
            waiting,
            ..JobView::of(job, now)
        }
    }
}

/// elapsed * (100 - p) / p, for a started, unfinished job with progress
/// strictly between 0 and 100.
fn estimate(job: &JobRecord, now: i64) -> Option<i64> {
    if is_final(job.state) {
        return Some(0).filter(|_| job.state == JobState::Succeeded);
    }
    let p = i64::from(job.progress.filter(|p| (1..100).contains(p))?);
    let elapsed = now.saturating_sub(job.started_at?).max(0);
    Some(elapsed.saturating_mul(100 - p) / p)
}

/// Succeeded, dead, cancelled, expired.
pub fn is_final(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Dead | JobState::Cancelled | JobState::Expired
    )
}

/// A job from this host's store, or (on JetStream) the status another
/// host shared: when this host has no record of it, or its record is
/// behind (the job went on elsewhere: a retry, a next slice or a
/// hand-back another host took).
async fn find<T: Transport>(state: &ApiState<T>, id: &str) -> Result<Option<JobView>, ApiError> {
    let local = state
        .deps
        .store
        .job(id)
        .await?
        .map(|job| JobView::seen_by(job, now_ms(), &state.deps.control));
    let Some(cluster) = &state.cluster else {
        return Ok(local);
    };
    match local {
        Some(view) if is_final(view.state) => Ok(Some(view)),
        // A record `running` with no call of it here (its outcome could not
        // be recorded, and the store could not even put it back) may have
        // gone on elsewhere.
        Some(view) if view.state == JobState::Running && state.deps.control.is_running(id) => {
            Ok(Some(view))
        }
        Some(view) => Ok(Some(match cluster.board.get(id).await {
            Some(shared) if newer(&shared, &view) => shared,
            _ => view,
        })),
        None => Ok(cluster.board.get(id).await),
    }
}

/// Whether `shared` (from the board) is a later status of the same life of
/// the job than `local`.
fn newer(shared: &JobView, local: &JobView) -> bool {
    shared.replays == local.replays && shared.updated_at > local.updated_at
}

/// `GET /v1/jobs/{id}`.
pub async fn status<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(view) = find(&state, &id).await? else {
        return Err(ApiError::not_found(format!("no job {id}")));
    };
    let mut response = Json(&view).into_response();
    if view.state == JobState::Succeeded {
        *response.status_mut() = StatusCode::SEE_OTHER;
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}/result", view.id)) {
            response.headers_mut().insert(LOCATION, v);
        }
    } else if !is_final(view.state) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// `GET /v1/jobs/{id}/result`: the handler's result as it returned it
/// (JSON), once the job succeeded.
pub async fn result<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(view) = find(&state, &id).await? else {
        return Err(ApiError::not_found(format!("no job {id}")));
    };
    match view.state {
        JobState::Succeeded => {}
        s if is_final(s) => {
            return Err(ApiError::conflict(format!(
                "job {id} ended {s} without a result{}",
                view.last_error
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
        s => {
            return Err(ApiError::conflict(format!(
                "job {id} is {s}; poll /v1/jobs/{id} until it succeeds"
            )));
        }
    }
    let body = match view.result {
        None => "null".to_owned(),
        Some(r) if serde_json::from_str::<serde::de::IgnoredAny>(&r).is_ok() => r,
        Some(r) => serde_json::Value::String(r).to_string(),
    };
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/jobs` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    state: Option<String>,
    channel: Option<String>,
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    before: Option<String>,
}

/// `GET /v1/jobs?state=&channel=&limit=&before=`: newest first, paged with
/// the `next` link of each page.
pub async fn list<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let job_state = params
        .state
        .as_deref()
        .map(|s| {
            JobState::parse(s).ok_or_else(|| {
                let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(format!("unknown state {s:?}; one of: {}", all.join(", ")))
            })
        })
        .transpose()?;
    page(
        &state,
        job_state,
        params.channel,
        params.limit,
        params.before,
        "/v1/jobs",
    )
    .await
}

/// One page of jobs as `{"jobs": [...], "next": link-or-null}`.
pub(super) async fn page<T: Transport>(
    state: &ApiState<T>,
    job_state: Option<JobState>,
    channel: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
    path: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(c) = &channel {
        super::check_channel(c).map_err(|e| ApiError::bad_request(e.message))?;
    }
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let cursor = before.as_deref().map(parse_cursor).transpose()?;
    let jobs = state
        .deps
        .store
        .jobs_page(
            JobFilter {
                state: job_state,
                channel: channel.clone(),
                limit,
            },
            cursor,
        )
        .await?;
    let now = now_ms();
    let next = (jobs.len() == limit)
        .then(|| jobs.last())
        .flatten()
        .map(|last| {
            let mut link = format!(
                "{path}?limit={limit}&before={}%3A{}",
                last.created_at, last.id
            );
            if let (Some(s), true) = (job_state, path == "/v1/jobs") {
                link.push_str(&format!("&state={s}"));
            }
            if let Some(c) = &channel {
                link.push_str(&format!("&channel={c}"));
            }
            link
        });
    let control = &state.deps.control;
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .map(|j| JobView::seen_by(j, now, control))
        .collect();
    Ok(Json(serde_json::json!({ "jobs": jobs, "next": next })))
}

/// `created_at:id`, as the `next` links write it.
fn parse_cursor(s: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("before={s:?} is not a cursor from a next link"));
    let (at, id) = s.split_once(':').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_owned()))
}

/// `DELETE /v1/jobs/{id}`: a waiting job is cancelled at once; a job
/// running on this host is interrupted (the sandbox stops the guest) and
/// recorded as cancelled; a finished job is a 409. On JetStream a job
/// another host has, or none has yet, is cancelled on every host (202).
pub async fn cancel<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = &state.deps.store;
    let control = &state.deps.control;
    // On JetStream the job may have gone on (or ended) on another host.
    if state.cluster.is_some()
        && let Some(view) = find(&state, &id).await?
        && is_final(view.state)
    {
        return Err(ApiError::conflict(format!(
            "job {id} already ended: {}",
            view.state
        )));
    }
    // A job just claimed registers its call a moment later; give it that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match store.cancel(&id).await? {
            Cancel::Cancelled(job) => {
                tracing::info!(job_id = %id, "job cancelled by an operator");
                control.changed(&id);
                // Another host may hold a delivery of it: tell every host.
                tell_every_host(&state, &id, &job.message_id, &job.channel, &job.consumer).await?;
                return Ok(Json(JobView::of(*job, now_ms())).into_response());
            }
            Cancel::NotFound => {
                // On JetStream it may be another host's job.
                if let Some(cluster) = &state.cluster
                    && let Some(view) = cluster.board.get(&id).await
                {
                    tell_every_host(&state, &id, &view.message_id, &view.channel, &view.handler)
                        .await?;
                    tracing::info!(job_id = %id, "cancel of another host's job sent to every host");
                    return Ok((StatusCode::ACCEPTED, Json(view)).into_response());
                }
                if state.cluster.is_some() {
                    return cancel_unseen(&state, &id).await;
                }
                return Err(ApiError::not_found(format!("no job {id}")));
            }
            Cancel::Finished(s) => {
                return Err(ApiError::conflict(format!("job {id} already ended: {s}")));
            }
            Cancel::Running if control.interrupt(&id) => break,
            Cancel::Running if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Cancel::Running => {
                return Err(ApiError::conflict(format!(
                    "job {id} is recorded running but no call of it runs here; try again"
                )));
            }
        }
    }
    tracing::info!(job_id = %id, "running job interrupted by an operator");
    // Wait for the pump to record how it ended (normally `cancelled`; a
    // call that finished just before the interrupt keeps its outcome).
    let until = tokio::time::Instant::now() + CANCEL_WAIT;
    loop {
        let job = store
            .job(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        if job.state != JobState::Running || tokio::time::Instant::now() >= until {
            let status = match job.state {
                JobState::Cancelled => StatusCode::OK,
                // The call ended on its own just before the interrupt.
                s if is_final(s) => {
                    return Err(ApiError::conflict(format!(
                        "job {id} ended {s} before it could be interrupted"
                    )));
                }
                // Still recording, or handed back by a shutdown meanwhile.
                _ => StatusCode::ACCEPTED,
            };
            return Ok((status, Json(JobView::of(job, now_ms()))).into_response());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On JetStream, a cancel of a job no host has recorded or shared yet (its
/// message is still on its way: a backlog, a delay, a producer that
/// posted around every host): the cancel waits for it in `SLUICE_CANCELS`
/// (as long as the stream keeps messages), every host records the job
/// cancelled, and whichever host its message reaches acks it without
/// running it. A 202 with this host's record (cancelled; message and
/// channel empty until the message arrives). An id that is not a job id's
/// shape is a 404, so a typo waits for nothing.
async fn cancel_unseen<T: Transport>(state: &ApiState<T>, id: &str) -> Result<Response, ApiError> {
    if !crate::store::is_job_id(id) {
        return Err(ApiError::not_found(format!(
            "no job {id} (a job id is 36 characters, 8-4-4-4-12 lowercase hex)"
        )));
    }
    tell_every_host(state, id, "", "", "").await?;
    let store = &state.deps.store;
    // This host applies it now too (its watch will again: the same), so
    // the answer shows it and a delivery arriving here next is dropped.
    match store.cancel_from_elsewhere(id, "", "", "", None).await? {
        crate::store::RemoteCancel::Running => {
            state.deps.control.interrupt(id);
        }
        _ => state.deps.control.changed(id),
    }
    tracing::info!(job_id = %id, "cancel of a job no host has yet sent to every host; it is dropped when its message arrives");
    let view = store.job(id).await?.map(|job| JobView::of(job, now_ms()));
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// On JetStream: writes the cancel where every host sees it. A 503 if it
/// cannot (this host's record is cancelled already; another host holding
/// a delivery would run it).
async fn tell_every_host<T: Transport>(
    state: &ApiState<T>,
    id: &str,
    message_id: &str,
    channel: &str,
    handler: &str,
) -> Result<(), ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(());
    };
    let note = crate::cluster::CancelNote {
        message_id: message_id.to_owned(),
        channel: channel.to_owned(),
        handler: handler.to_owned(),
        reason: None,
    };
    cluster.cancels.send(id, &note).await.map_err(|e| {
        tracing::error!(job_id = %id, error = %e, "cannot send a cancel to the other hosts");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("job {id} is cancelled on this host, but the other hosts could not be told: {e}; try again"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, progress: Option<u8>, started_at: Option<i64>) -> JobRecord {
        JobRecord {
            id: "j".into(),
            message_id: "m".into(),
            channel: "c".into(),
            consumer: "h".into(),
            kind: "command".into(),
            headers: vec![],
            body: String::new(),
            state,
            attempts: 1,
            slices: 0,
            visible_at: 0,
            expires_at: None,
            cursor: None,
            progress,
            progress_note: None,
            result: None,
            last_error: None,
            plugin_version: None,
            plugin_hash: None,
            fuel_used: 0,
            replays: 0,
            conflicts: 0,
            created_at: 0,
            started_at,
            finished_at: None,
            updated_at: 0,
        }
    }

    #[test]
    fn estimate_scales_elapsed_by_progress() {
        assert_eq!(
            estimate(&job(JobState::Scheduled, Some(25), Some(1000)), 2000),
            Some(3000)
        );
        assert_eq!(estimate(&job(JobState::Running, None, Some(0)), 10), None);
        assert_eq!(
            estimate(&job(JobState::Running, Some(0), Some(0)), 10),
            None
        );
        assert_eq!(estimate(&job(JobState::Queued, Some(50), None), 10), None);
        assert_eq!(
            estimate(&job(JobState::Succeeded, Some(100), Some(0)), 10),
            Some(0)
        );
        assert_eq!(estimate(&job(JobState::Dead, Some(50), Some(0)), 10), None);
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor("12:abc-1"), Ok((12, "abc-1".to_owned())));
        assert!(parse_cursor("x:abc").is_err());
        assert!(parse_cursor("12").is_err());
    }
}
