//! The inbox: how a host records a delivery from an external transport
//! (JetStream), where the job row is created on receipt rather than on
//! publish.
//!
//! The job id is derived from the message id and the handler, so every host
//! names the same job the same way. A delivery whose job already reached a
//! final state here (committed but not acked before a crash, say) is acked
//! without running the handler again; a redelivered slice that was already
//! committed is recognised by its slice number.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::records::{ClaimedJob, JobState};
use super::{Store, StoreError};
use crate::message::{Message, now_ms};

/// What to do with a delivery.
#[derive(Debug)]
pub enum Received {
    /// Run it.
    Run(ClaimedJob),
    /// Already finished here (or this slice was already committed): ack it
    /// without running anything.
    Done(JobState),
    /// Not due yet: redeliver at this Unix ms.
    NotYet(i64),
}

/// The job id every host gives `(message_id, consumer)`.
pub fn job_id_for(message_id: &str, consumer: &str) -> String {
    let mut h = Sha256::new();
    h.update(message_id.as_bytes());
    h.update([0]);
    h.update(consumer.as_bytes());
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A delivery as the transport decoded it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The handler it is for.
    pub consumer: String,
    /// The message.
    pub message: Message,
    /// Which slice it starts (0: the original message).
    pub slice: u32,
    /// Where that slice starts.
    pub cursor: Option<String>,
    /// Unix ms before which it must not run.
    pub not_before: Option<i64>,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
    /// Attempts already made at this slice when this message was sent (a
    /// retry message's `sluice-attempt`; 0 for the message itself), so the
    /// attempt count goes on across hosts.
    pub attempts_before: u32,
}

impl Store {
    /// Records a delivery and says whether to run it.
    pub async fn receive(&self, d: Delivered) -> Result<Received, StoreError> {
        self.call(move |conn| receive_one(conn, d, now_ms())).await
    }

    /// Records a batch of deliveries in one operation (one commit round
    /// trip for a whole pull), answering for each in order. All or
    /// nothing: if one cannot be recorded, none is, and none may run.
    pub async fn receive_all(&self, batch: Vec<Delivered>) -> Result<Vec<Received>, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            batch
                .into_iter()
                .map(|d| receive_one(conn, d, now))
                .collect()
        })
        .await
    }
}

fn receive_one(
    conn: &rusqlite::Connection,
    d: Delivered,
    now: i64,
) -> Result<Received, StoreError> {
    let id = job_id_for(&d.message.id, &d.consumer);
    let row: Option<(String, u32, u32, i64, u32)> = conn
        .prepare_cached(
            "SELECT state, attempts, slices, visible_at, replays FROM jobs WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let not_yet = d.not_before.filter(|t| *t > now);
    let attempts = match row {
        None => {
            let headers = serde_json::to_string(&d.message.headers)
                .map_err(|e| StoreError::Corrupt(format!("headers: {e}")))?;
            let state = if not_yet.is_some() {
                "scheduled"
            } else {
                "running"
            };
            conn.prepare_cached(
                "INSERT INTO jobs (id, message_id, channel, consumer, kind, headers, body,
                     state, attempts, slices, visible_at, expires_at, cursor, created_at,
                     started_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?14)",
            )?
            .execute(params![
                id,
                d.message.id,
                d.message.channel,
                d.consumer,
                d.message.kind.as_str(),
                headers,
                d.message.body,
                state,
                if not_yet.is_some() {
                    d.attempts_before
                } else {
                    d.attempts_before.saturating_add(1)
                },
                d.slice,
                not_yet.unwrap_or(now),
                d.expires_at,
                d.cursor,
                now,
                not_yet.map_or(Some(now), |_| None),
            ])?;
            if let Some(at) = not_yet {
                return Ok(Received::NotYet(at));
            }
            d.attempts_before.saturating_add(1)
        }
        Some((state, attempts, slices, visible_at, replays)) => {
            let state = JobState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown job state {state:?}")))?;
            if matches!(
                state,
                JobState::Succeeded | JobState::Dead | JobState::Expired | JobState::Cancelled
            ) || d.slice < slices
            {
                return Ok(Received::Done(state));
            }
            // A redelivery of an attempt older than a retry this host has
            // committed (the attempt's ack was lost): the retry message in
            // this host's outbox carries the job on, so this one is done
            // with. (A job left retrying by a version that retried by NAK
            // has no such message: it waits out its backoff as it did.)
            if state == JobState::Retrying && d.slice == slices && d.attempts_before < attempts {
                let retry =
                    super::jobs::retry_id(&d.message.id, &d.consumer, replays, slices, attempts);
                let sent: bool = conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = ?1)")?
                    .query_row(params![retry], |r| r.get(0))?;
                if sent {
                    return Ok(Received::Done(state));
                }
            }
            let not_yet =
                not_yet.or((state == JobState::Retrying && visible_at > now).then_some(visible_at));
            if let Some(at) = not_yet {
                conn.prepare_cached(
                    "UPDATE jobs SET state = 'scheduled', visible_at = ?2, updated_at = ?3
                     WHERE id = ?1",
                )?
                .execute(params![id, at, now])?;
                return Ok(Received::NotYet(at));
            }
            // A newer slice than this host has seen starts afresh.
            let attempts = if d.slice > slices {
                d.attempts_before
            } else {
                attempts.max(d.attempts_before)
            }
            .saturating_add(1);
            conn.prepare_cached(
                "UPDATE jobs SET state = 'running', attempts = ?2, slices = ?3,
                     cursor = COALESCE(?4, cursor), started_at = COALESCE(started_at, ?5),
                     updated_at = ?5
                 WHERE id = ?1",
            )?
            .execute(params![id, attempts, d.slice.max(slices), d.cursor, now])?;
            attempts
        }
    };
    let cursor: Option<String> = conn
        .prepare_cached("SELECT cursor FROM jobs WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))?;
    Ok(Received::Run(ClaimedJob {
        job_id: id,
        consumer: d.consumer,
        message: d.message,
        attempt: attempts,
        cursor,
        expires_at: d.expires_at,
    }))
}
