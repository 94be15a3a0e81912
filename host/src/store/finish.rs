//! Finishing a job: its outcome, its state changes and its posts in one
//! transaction, and the messages that carry it on (the next slice, a retry,
//! a replay) where another host may pick it up.

use std::sync::atomic::AtomicI64;

use rusqlite::{Connection, OptionalExtension, params};

use super::jobs::*;
use super::state::{self, Applied};
use super::{StoreError, outbox};
use crate::message::{
    ATTEMPT_HEADER, CURSOR_HEADER, Message, MessageKind, REPLAY_HEADER, SLICE_HEADER,
};

/// What a finish needs besides its arguments.
pub(super) struct FinishCtx<'a> {
    pub(super) outbox: bool,
    pub(super) versions: &'a AtomicI64,
    pub(super) now: i64,
}

pub(super) fn finish_job(
    conn: &Connection,
    job_id: &str,
    attempt: u32,
    call: &CallRecord,
    finish: Finish,
    ctx: &FinishCtx<'_>,
) -> Result<FinishResult, StoreError> {
    let (outbox, now) = (ctx.outbox, ctx.now);
    let running: Option<u32> = conn
        .prepare_cached("SELECT attempts FROM jobs WHERE id = ?1 AND state = 'running'")?
        .query_row(params![job_id], |r| r.get(0))
        .optional()?;
    if running != Some(attempt) {
        return Ok(FinishResult::Stale);
    }
    // Columns every outcome records: who ran it and what it cost (a
    // success records them in its one UPDATE).
    let record_call = || -> Result<(), StoreError> {
        conn.prepare_cached(
            "UPDATE jobs SET plugin_version = COALESCE(?2, plugin_version),
                 plugin_hash = COALESCE(?3, plugin_hash), fuel_used = fuel_used + ?4,
                 updated_at = ?5, conflicts = conflicts + ?6
             WHERE id = ?1",
        )?
        .execute(params![
            job_id,
            call.plugin_version,
            call.plugin_hash,
            call.fuel_used as i64,
            now,
            call.conflicts
        ])?;
        Ok(())
    };
    let mut posted = Vec::new();
    let mut reassigned = Vec::new();
    match finish {
        Finish::Succeeded { result, commit } => {
            let Some(moved) = apply(conn, job_id, &commit, ctx, &mut posted)? else {
                record_call()?;
                return conflict(conn, job_id, now);
            };
            let note = commit.progress.and_then(|(_, note)| note);
            record_success(conn, job_id, attempt, call, result, note, now)?;
            return Ok(FinishResult::Committed {
                posted,
                reassigned: moved,
            });
        }
        _ => record_call()?,
    }
    match finish {
        // Recorded above, in its one UPDATE.
        Finish::Succeeded { .. } => {}
        Finish::Continue {
            cursor,
            visible_at,
            commit,
        } => {
            let Some(moved) = apply(conn, job_id, &commit, ctx, &mut posted)? else {
                return conflict(conn, job_id, now);
            };
            reassigned = moved;
            conn.prepare_cached(
                "UPDATE jobs SET state = 'scheduled', cursor = ?2, visible_at = ?3, attempts = 0,
                     slices = slices + 1, last_error = NULL WHERE id = ?1",
            )?
            .execute(params![job_id, cursor, visible_at])?;
            if outbox {
                continuation(conn, job_id, &cursor, visible_at, now)?;
            }
            set_progress(conn, job_id, commit.progress.as_ref(), false)?;
        }
        Finish::Retry { error, visible_at } => {
            conn.prepare_cached(
                "UPDATE jobs SET state = 'retrying', last_error = ?2, visible_at = ?3 WHERE id = ?1",
            )?
            .execute(params![job_id, error, visible_at])?;
            if outbox {
                retry_message(conn, job_id, attempt, visible_at, now)?;
            }
        }
        Finish::Dead { error } => {
            conn.prepare_cached(
                "UPDATE jobs SET state = 'dead', last_error = ?2, finished_at = ?3 WHERE id = ?1",
            )?
            .execute(params![job_id, error, now])?;
        }
        Finish::Expired => {
            conn.prepare_cached(
                "UPDATE jobs SET state = 'expired', finished_at = ?2,
                     last_error = 'expired before it could start' WHERE id = ?1",
            )?
            .execute(params![job_id, now])?;
        }
        Finish::Cancelled { reason } => {
            conn.prepare_cached(
                "UPDATE jobs SET state = 'cancelled', last_error = ?2, finished_at = ?3 WHERE id = ?1",
            )?
            .execute(params![job_id, reason, now])?;
        }
        Finish::Release { visible_at, reason } => {
            release(conn, job_id, visible_at, &reason)?;
        }
    }
    Ok(FinishResult::Committed { posted, reassigned })
}

/// A success with no effects (no state read or written, nothing posted):
/// the hot path of a drain, one UPDATE that also checks the job is still
/// running this attempt (else it is stale and nothing is recorded).
pub(super) fn bare_success(
    conn: &Connection,
    job_id: &str,
    attempt: u32,
    call: &CallRecord,
    result: Option<String>,
    note: Option<String>,
    now: i64,
) -> Result<FinishResult, StoreError> {
    if !record_success(conn, job_id, attempt, call, result, note, now)? {
        return Ok(FinishResult::Stale);
    }
    Ok(FinishResult::Committed {
        posted: Vec::new(),
        reassigned: Vec::new(),
    })
}

/// Records a success (outcome, progress, who ran it) in one statement,
/// if attempt `attempt` of the job is running; false if it is not.
fn record_success(
    conn: &Connection,
    job_id: &str,
    attempt: u32,
    call: &CallRecord,
    result: Option<String>,
    note: Option<String>,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'succeeded', result = ?2, cursor = NULL,
                 finished_at = ?3, updated_at = ?3, last_error = NULL, progress = 100,
                 progress_note = COALESCE(?4, progress_note),
                 plugin_version = COALESCE(?5, plugin_version),
                 plugin_hash = COALESCE(?6, plugin_hash), fuel_used = fuel_used + ?7,
                 conflicts = conflicts + ?8
             WHERE id = ?1 AND state = 'running' AND attempts = ?9",
        )?
        .execute(params![
            job_id,
            result,
            now,
            note,
            call.plugin_version,
            call.plugin_hash,
            call.fuel_used as i64,
            call.conflicts,
            attempt
        ])?;
    Ok(changed == 1)
}

/// A state conflict: nothing of the call applied; the job goes back to
/// the queue without losing its attempt, and the conflict is counted.
pub(super) fn conflict(
    conn: &Connection,
    job_id: &str,
    now: i64,
) -> Result<FinishResult, StoreError> {
    release(conn, job_id, now, "state changed while running; re-running")?;
    conn.prepare_cached("UPDATE jobs SET conflicts = conflicts + 1 WHERE id = ?1")?
        .execute(params![job_id])?;
    Ok(FinishResult::Conflict)
}

/// Applies a success's effects (the posts recorded as `job_id`'s). `None` (and nothing applied) on a state
/// conflict; else the state keys that got another version than the commit
/// carried.
pub(super) fn apply(
    conn: &Connection,
    job_id: &str,
    commit: &Commit,
    ctx: &FinishCtx<'_>,
    posted: &mut Vec<Published>,
) -> Result<Option<Vec<String>>, StoreError> {
    let reassigned = if commit.state.changes.is_empty() && commit.state.reads.is_empty() {
        Vec::new()
    } else {
        match state::apply(conn, ctx.versions, &commit.state, ctx.now)? {
            Applied::Done { reassigned } => reassigned,
            Applied::Conflict => return Ok(None),
        }
    };
    let mut routes = Routes::default();
    for post in &commit.posts {
        if ctx.outbox {
            outbox::insert(
                conn,
                &post.message.id,
                None,
                post,
                None,
                Some(job_id),
                ctx.now,
            )?;
        } else {
            posted.push(publish_one(conn, &mut routes, post, Some(job_id), ctx.now)?);
        }
    }
    Ok(Some(reassigned))
}

/// A job's message as its row holds it, with its handler, slice number,
/// cursor and expiry.
pub(super) struct JobMessage {
    pub(super) message: Message,
    pub(super) consumer: String,
    pub(super) slices: u32,
    pub(super) cursor: Option<String>,
    pub(super) expires_at: Option<i64>,
    pub(super) replays: u32,
}

pub(super) fn job_message(conn: &Connection, job_id: &str) -> Result<JobMessage, StoreError> {
    let (kind, headers, job) = conn
        .prepare_cached(
            "SELECT message_id, channel, consumer, kind, headers, body, slices, expires_at, cursor,
                 replays
             FROM jobs WHERE id = ?1",
        )?
        .query_row(params![job_id], |r| {
            let kind: String = r.get(3)?;
            let headers: String = r.get(4)?;
            let job = JobMessage {
                message: Message {
                    id: r.get(0)?,
                    channel: r.get(1)?,
                    kind: MessageKind::default(),
                    headers: Vec::new(),
                    body: r.get(5)?,
                },
                consumer: r.get(2)?,
                slices: r.get(6)?,
                expires_at: r.get(7)?,
                cursor: r.get(8)?,
                replays: r.get(9)?,
            };
            Ok((kind, headers, job))
        })?;
    let mut job = job;
    job.message.kind = parse_kind(&kind)?;
    job.message.headers = parse_headers(&headers)?;
    Ok(job)
}

/// On an external transport the next slice must reach whichever host picks
/// it up, so it travels as a message of its own, addressed to this handler
/// only and carrying the cursor and slice number.
pub(super) fn continuation(
    conn: &Connection,
    job_id: &str,
    cursor: &str,
    visible_at: i64,
    now: i64,
) -> Result<(), StoreError> {
    let job = job_message(conn, job_id)?;
    let post = NewMessage {
        message: of_life(next_slice(&job.message, cursor, job.slices), job.replays),
        visible_at,
        expires_at: job.expires_at,
    };
    // A replayed job's slices get ids of their own: a replay may run a
    // slice again whose continuation an earlier life already sent.
    let dedupe = if job.replays == 0 {
        format!("{}/{}/slice/{}", job.message.id, job.consumer, job.slices)
    } else {
        format!(
            "{}/{}/slice/{}/{}",
            job.message.id, job.consumer, job.replays, job.slices
        )
    };
    outbox::insert(
        conn,
        &dedupe,
        Some(&job.consumer),
        &post,
        Some(cursor),
        Some(job_id),
        now,
    )
}

/// On an external transport a retry is a message of its own too, not a
/// NAK: a NAKed delivery holds a consumer slot through the whole backoff.
/// It is addressed to this handler, due when the backoff ends, and says how
/// many attempts were made (`sluice-attempt`), so the host that picks it up
/// counts on from there and the inbox tells the live retry from a
/// redelivery of the attempt before it.
pub(super) fn retry_message(
    conn: &Connection,
    job_id: &str,
    attempt: u32,
    visible_at: i64,
    now: i64,
) -> Result<(), StoreError> {
    let job = job_message(conn, job_id)?;
    let mut message = match &job.cursor {
        Some(cursor) => next_slice(&job.message, cursor, job.slices),
        None => {
            let mut m = job.message.clone();
            m.headers
                .retain(|(k, _)| k != CURSOR_HEADER && k != SLICE_HEADER && k != ATTEMPT_HEADER);
            m
        }
    };
    message
        .headers
        .push((ATTEMPT_HEADER.to_owned(), attempt.to_string()));
    let post = NewMessage {
        message: of_life(message, job.replays),
        visible_at,
        expires_at: job.expires_at,
    };
    let dedupe = retry_id(
        &job.message.id,
        &job.consumer,
        job.replays,
        job.slices,
        attempt,
    );
    to_handler(conn, &job, job_id, &dedupe, &post, now)
}

/// The message a replay sends: the job's message, addressed to its
/// handler, resuming at its slice and cursor, with fresh attempts. Its id
/// names the replay (`replays` counts them), so each replay is published
/// once and a second replay is not taken for a duplicate of the first.
pub(super) fn replay_message(conn: &Connection, job_id: &str, now: i64) -> Result<(), StoreError> {
    let job = job_message(conn, job_id)?;
    let message = match &job.cursor {
        Some(cursor) => next_slice(&job.message, cursor, job.slices),
        None => {
            let mut m = job.message.clone();
            m.headers
                .retain(|(k, _)| k != CURSOR_HEADER && k != SLICE_HEADER && k != ATTEMPT_HEADER);
            m.headers
                .push((SLICE_HEADER.to_owned(), job.slices.to_string()));
            m
        }
    };
    let post = NewMessage {
        message: of_life(message, job.replays),
        visible_at: now,
        expires_at: job.expires_at,
    };
    let dedupe = format!("{}/{}/replay/{}", job.message.id, job.consumer, job.replays);
    to_handler(conn, &job, job_id, &dedupe, &post, now)
}

/// Writes `post` (a retry or a replay of job `job_id`) to the outbox,
/// addressed to the job's handler only, resuming at its cursor.
pub(super) fn to_handler(
    conn: &Connection,
    job: &JobMessage,
    job_id: &str,
    dedupe: &str,
    post: &NewMessage,
    now: i64,
) -> Result<(), StoreError> {
    outbox::insert(
        conn,
        dedupe,
        Some(&job.consumer),
        post,
        job.cursor.as_deref(),
        Some(job_id),
        now,
    )
}

/// The dedupe id of the retry message sent after attempt `attempt` of
/// slice `slice` failed, in the job's `replays`-th life (a replay starts
/// the attempts afresh, so its retries need ids of their own).
pub(super) fn retry_id(
    message_id: &str,
    consumer: &str,
    replays: u32,
    slice: u32,
    attempt: u32,
) -> String {
    format!("{message_id}/{consumer}/retry/{replays}/{slice}/{attempt}")
}

/// The message that starts slice `slice` of `message`'s job at `cursor`.
/// `message`, sent to a job's handler in its `replays`-th life, marked
/// with that life (`sluice-replay`; none in the first life, as before
/// replays existed) so that a host whose record is final from an earlier
/// life runs it instead of acking it as done.
fn of_life(mut message: Message, replays: u32) -> Message {
    message
        .headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(REPLAY_HEADER));
    if replays > 0 {
        message
            .headers
            .push((REPLAY_HEADER.to_owned(), replays.to_string()));
    }
    message
}

pub fn next_slice(message: &Message, cursor: &str, slice: u32) -> Message {
    let mut next = message.clone();
    next.headers
        .retain(|(k, _)| k != CURSOR_HEADER && k != SLICE_HEADER && k != ATTEMPT_HEADER);
    next.headers
        .push((CURSOR_HEADER.to_owned(), cursor.to_owned()));
    next.headers
        .push((SLICE_HEADER.to_owned(), slice.to_string()));
    next
}

pub(super) fn set_progress(
    conn: &Connection,
    job_id: &str,
    progress: Option<&(u8, Option<String>)>,
    done: bool,
) -> Result<(), StoreError> {
    let (percent, note) = match (progress, done) {
        (Some((p, n)), false) => (Some(*p), n.clone()),
        (Some((_, n)), true) => (Some(100), n.clone()),
        (None, true) => (Some(100), None),
        (None, false) => return Ok(()),
    };
    conn.prepare_cached(
        "UPDATE jobs SET progress = ?2, progress_note = COALESCE(?3, progress_note) WHERE id = ?1",
    )?
    .execute(params![job_id, percent, note])?;
    Ok(())
}

/// Back to the queue without counting the attempt.
pub(super) fn release(
    conn: &Connection,
    job_id: &str,
    visible_at: i64,
    reason: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE jobs SET state = CASE WHEN cursor IS NULL THEN 'queued' ELSE 'scheduled' END,
             attempts = MAX(attempts - 1, 0), visible_at = ?2, last_error = ?3 WHERE id = ?1",
    )?
    .execute(params![job_id, visible_at, reason])?;
    Ok(())
}
