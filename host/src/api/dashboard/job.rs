//! `GET /v1/dashboard/jobs/{id}`: one job's page in one request: its
//! record (with the plugin's content hash and the message it carries), its
//! result, the messages it posted, and whether it runs on this host now
//! (so the page offers a cancel). Bodies and results are cut at
//! [`MAX_TEXT`] bytes: the page is for reading, `/v1/jobs/{id}/result`
//! gives the whole result.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::api::jobs::JobView;
use crate::api::{ApiError, ApiState};
use crate::message::now_ms;
use crate::transport::Transport;

/// Longest body or result the page gets, in bytes.
pub const MAX_TEXT: usize = 64 * 1024;

/// `GET /v1/dashboard/jobs/{id}`.
pub async fn job<T: Transport>(
    State(state): State<Arc<ApiState<T>>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = &state.deps.store;
    let Some(record) = store.job(&id).await? else {
        // On JetStream another host may have recorded it.
        if let Some(cluster) = &state.cluster
            && let Some(view) = cluster.board.get(&id).await
        {
            return Ok(Json(json!({ "job": view, "remote": true })));
        }
        return Err(ApiError::not_found(format!("no job {id}")));
    };
    let (posts, more_posts) = store.posts_of(&id).await?;
    let hash = record.plugin_hash.clone();
    let headers = record.headers.clone();
    let cursor = record.cursor.clone();
    let (body, body_cut) = cut(&record.body);
    let (body, body_cut) = (body.to_owned(), body_cut);
    let result = record
        .result
        .as_deref()
        .map(cut)
        .map(|(r, c)| (r.to_owned(), c));
    // With why it waits, when its handler's flow rules hold it.
    let view = JobView::seen_by(record, now_ms(), &state.deps.control);
    Ok(Json(json!({
        "job": view,
        "remote": false,
        "plugin_hash": hash,
        "cursor": cursor,
        "headers": headers,
        "body": body,
        "body_cut": body_cut,
        "result": result.as_ref().map(|r| &r.0),
        "result_cut": result.as_ref().is_some_and(|r| r.1),
        "posts": posts,
        "more_posts": more_posts,
        "running_here": state.deps.control.is_running(&id),
        "transport": if state.jetstream.is_some() { "jetstream" } else { "embedded" },
    })))
}

/// `text` cut at a char boundary at most [`MAX_TEXT`] bytes in; true when
/// something was cut.
fn cut(text: &str) -> (&str, bool) {
    if text.len() <= MAX_TEXT {
        return (text, false);
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_a_char_boundary() {
        assert_eq!(cut("short"), ("short", false));
        let long = "é".repeat(MAX_TEXT);
        let (head, was_cut) = cut(&long);
        assert!(was_cut);
        assert!(head.len() <= MAX_TEXT && head.chars().all(|c| c == 'é'));
    }
}
