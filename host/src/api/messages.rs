//! `POST /v1/channels/{channel}/messages`: the starting half of
//! asynchronous request-reply.
//!
//! The body is the message body. It is published through the daemon's
//! transport, exactly like `sluice post`, and the answer is `202 Accepted`
//! with the job to poll in `Location`. An `Idempotency-Key` header becomes
//! the message id, so a client that retries a post after a timeout gets
//! the same job back instead of a second one.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::message::{Message, MessageKind, new_id, now_ms, options};
use crate::store::{NewMessage, job_id_for};
use crate::transport::Transport;

/// Longest `Idempotency-Key` accepted (it becomes the message id).
const MAX_KEY: usize = 200;

/// Query parameters of a post.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostParams {
    /// Run after this delay (`30s`, `5m`).
    delay: Option<String>,
    /// Run at this time (RFC 3339).
    at: Option<String>,
    /// Expire (never start) if not started within this long.
    expires_in: Option<String>,
    /// command (default) or event.
    kind: Option<String>,
    /// 0 (default) to 9, higher runs first.
    priority: Option<String>,
    /// Uniqueness key (`sluice-unique`).
    unique: Option<String>,
    /// How long the key is held at most (`sluice-unique-for`).
    unique_for: Option<String>,
    /// reject (default) or replace (`sluice-on-duplicate`).
    on_duplicate: Option<String>,
    /// Debounce key (`sluice-debounce`).
    debounce: Option<String>,
    /// Its window (`sluice-debounce-for`).
    debounce_for: Option<String>,
}

/// `POST /v1/channels/{channel}/messages`.
pub async fn post<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(channel): Path<String>,
    params: Result<Query<PostParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::check_channel(&channel)?;
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = body.map_err(|e| ApiError::new(e.status(), body_error(e.status())))?;
    let message = build(&state, channel, params, &headers, body)?;
    let channel = message.message.channel.clone();
    let delayed = message.visible_at > crate::message::now_ms();
    let mut published = state.deps.transport.publish(vec![message]).await?;
    let Some(mut published) = published.pop() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the transport accepted nothing",
        ));
    };
    if published.job_ids.is_empty() {
        // JetStream: hosts create jobs on receipt, each named by (message
        // id, handler), so the ids are known here already.
        published.job_ids = state
            .deps
            .registry
            .current()
            .handlers_of(&channel)
            .iter()
            .map(|h| job_id_for(&published.message_id, &h.info().name))
            .collect();
        // A delayed one is recorded here as scheduled (the transport did)
        // and shared, so every host can answer for it before it is due.
        if delayed {
            for id in &published.job_ids {
                state.deps.control.changed(id);
            }
        }
    }
    if let Some(holder) = &published.duplicate_of {
        state.deps.control.metrics.unique_outcome("rejected");
        return Ok((
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "error": format!("message {holder} holds this post's unique key; nothing new queued"),
                "duplicate_of": holder,
                "job_ids": published.job_ids,
                "status": published.job_ids.first().map(|id| format!("/v1/jobs/{id}")),
            })),
        )
            .into_response());
    }
    if let Some(holder) = published.replaced_message.take() {
        published.replaced =
            cancel_replaced(&state, &channel, &holder, &published.message_id).await;
    }
    if !published.replaced.is_empty() {
        state.deps.control.metrics.unique_outcome("replaced");
    }
    let mut response = (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "message_id": published.message_id,
            "job_ids": published.job_ids,
            "duplicate": published.duplicate,
            "replaced": published.replaced,
            "status": published.job_ids.first().map(|id| format!("/v1/jobs/{id}")),
        })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    if let Some(v) = published
        .job_ids
        .first()
        .and_then(|id| HeaderValue::from_str(&format!("/v1/jobs/{id}")).ok())
    {
        headers.insert(LOCATION, v);
    }
    Ok(response)
}

/// JetStream: the jobs of `holder` (on `channel`), whose key a replace
/// post (message `replacer`) took. No host runs them any more (the key's entry and tombstone
/// say so to whichever host starts one, see `transport::jetstream::
/// unique`); this records them cancelled here and on every host, so
/// their status says so at once and a delivery is dropped on receipt.
/// Their ids, for the answer's `replaced`.
async fn cancel_replaced<T: Transport>(
    state: &ApiState<T>,
    channel: &str,
    holder: &str,
    replacer: &str,
) -> Vec<String> {
    let handlers: Vec<String> = state
        .deps
        .registry
        .current()
        .handlers_of(channel)
        .iter()
        .map(|h| h.info().name.clone())
        .collect();
    let reason = format!("replaced by message {replacer} (unique key)");
    let mut ids = Vec::with_capacity(handlers.len());
    for handler in handlers {
        let id = job_id_for(holder, &handler);
        if let Some(cluster) = &state.cluster {
            let note = crate::cluster::CancelNote {
                message_id: holder.to_owned(),
                channel: channel.to_owned(),
                handler: handler.clone(),
                reason: Some(reason.clone()),
            };
            if let Err(e) = cluster.cancels.send(&id, &note).await {
                tracing::warn!(job_id = %id, error = %e, "replaced job not recorded cancelled on the other hosts yet; whichever host receives it records it so");
            }
        }
        // Never interrupted: a job that started would have kept its key.
        match state
            .deps
            .store
            .cancel_from_elsewhere(&id, holder, channel, &handler, Some(&reason))
            .await
        {
            Ok(_) => state.deps.control.changed(&id),
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "cannot record a replaced job cancelled here");
            }
        }
        ids.push(id);
    }
    ids
}

fn body_error(status: StatusCode) -> &'static str {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is larger than the configured body_limit"
    } else {
        "cannot read the request body"
    }
}

/// Checks the request and turns it into a message.
fn build<T: Transport>(
    state: &ApiState<T>,
    channel: String,
    params: PostParams,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<NewMessage, ApiError> {
    let kind = match params.kind.as_deref() {
        None => MessageKind::Command,
        Some(k) => MessageKind::parse(k)
            .ok_or_else(|| ApiError::bad_request(format!("kind={k:?}: use command or event")))?,
    };
    let id = match headers.get("idempotency-key") {
        None => new_id(),
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"
                    ))
                })?;
            key.to_owned()
        }
    };
    let now = now_ms();
    let visible_at = match (params.at.as_deref(), params.delay.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give delay or at, not both"));
        }
        (Some(at), None) => {
            let t = humantime::parse_rfc3339_weak(at).map_err(|e| {
                ApiError::bad_request(format!("at={at:?} is not an RFC 3339 time: {e}"))
            })?;
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| ApiError::bad_request("at is before 1970"))?
                .as_millis();
            i64::try_from(ms).unwrap_or(i64::MAX)
        }
        (None, Some(d)) => now.saturating_add(millis(duration("delay", d)?)),
        (None, None) => now,
    };
    let expires_at = params
        .expires_in
        .as_deref()
        .map(|d| duration("expires_in", d).map(|d| now.saturating_add(millis(d))))
        .transpose()?;
    // Without a mapper the handler gets the body as JSON, so anything else
    // could only end as a poison message: refuse it now instead.
    let mapped = state.deps.registry.current().mappers.contains_key(&channel);
    if !mapped && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(ApiError::unprocessable(format!(
            "the body is not JSON ({e}), and channel {channel} has no mapper to read it"
        )));
    }
    let mut headers = trace_headers(headers);
    if let Some(p) = params.priority {
        if let Some(Err(rule)) = options::check(options::PRIORITY_HEADER, &p) {
            return Err(ApiError::bad_request(format!("priority: {rule}")));
        }
        options::set(&mut headers, options::PRIORITY_HEADER, p.trim().to_owned());
    }
    set_options(
        &mut headers,
        &[
            ("debounce", options::DEBOUNCE_HEADER, &params.debounce),
            (
                "debounce_for",
                options::DEBOUNCE_FOR_HEADER,
                &params.debounce_for,
            ),
        ],
    )?;
    set_options(
        &mut headers,
        &[
            ("unique", options::UNIQUE_HEADER, &params.unique),
            ("unique_for", options::UNIQUE_FOR_HEADER, &params.unique_for),
            (
                "on_duplicate",
                options::ON_DUPLICATE_HEADER,
                &params.on_duplicate,
            ),
        ],
    )?;
    Ok(NewMessage {
        message: Message {
            id,
            channel,
            kind,
            headers,
            body: body.to_vec(),
        },
        visible_at,
        expires_at,
    })
}

/// Sets the option headers of `given` ((query parameter, header, value)),
/// each checked by its rule; the first is the key the others go with.
fn set_options(
    headers: &mut crate::message::Headers,
    given: &[(&str, &str, &Option<String>)],
) -> Result<(), ApiError> {
    let key = given
        .first()
        .map(|(param, _, value)| (*param, value.is_some()));
    for (param, name, value) in given {
        let Some(v) = value else { continue };
        if let Some((key, false)) = key {
            return Err(ApiError::bad_request(format!("{param} needs {key}=KEY")));
        }
        if let Some(Err(rule)) = options::check(name, v) {
            return Err(ApiError::bad_request(format!("{param}: {rule}")));
        }
        options::set(headers, name, v.trim().to_owned());
    }
    Ok(())
}

/// The request's W3C `traceparent` (so the job joins the caller's trace),
/// or a new trace when it has none or an invalid one (as the spec asks of a
/// receiver: never fail a request over it).
fn trace_headers(headers: &HeaderMap) -> crate::message::Headers {
    let given = headers
        .get(crate::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::telemetry::TraceParent::parse(v).ok());
    let tp = given.unwrap_or_else(crate::telemetry::TraceParent::new_root);
    vec![(crate::telemetry::TRACEPARENT.to_owned(), tp.to_string())]
}

fn duration(name: &str, value: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(value).map_err(|e| {
        ApiError::bad_request(format!(
            "{name}={value:?} is not a duration like 30s or 5m: {e}"
        ))
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
