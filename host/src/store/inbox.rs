//! The inbox: how a host records a delivery from an external transport
//! (JetStream), where the job row is created on receipt rather than on
//! publish.
//!
//! The job id is derived from the message id and the handler, so every host
//! names the same job the same way. A delivery whose job already reached a
//! final state here (committed but not acked before a crash, say) is acked
//! without running the handler again; a redelivered slice that was already
//! committed is recognised by its slice number.
//!
//! Attempts count across hosts. A retry message says how many attempts
//! came before it (`attempts_before`); and the server's delivery count
//! tells how many times this very message was handed out. Deliveries this
//! host never saw (made to another host that died mid-call, or lost the
//! message in a restart) count as attempts here, so a job that kills every
//! host that runs it still reaches its dead letter after `max_attempts`.
//! The host remembers the last delivery it took of each job's message
//! (`delivery_seq`, `delivery_count`), so its own hand-backs (a NAK that
//! costs no attempt) are not counted again. What it cannot see: a
//! hand-back made by another host (a graceful stop there) also counts here,
//! at most one attempt per hand-back.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::records::{ClaimedJob, JobState};
use super::{NewMessage, Store, StoreError};
use crate::message::{Message, now_ms};

/// What to do with a delivery.
#[derive(Debug)]
pub enum Received {
    /// Run it.
    Run(ClaimedJob),
    /// Already finished here (or this slice was already committed): ack it
    /// without running anything.
    Done(JobState),
    /// Dead here, and this is the message it died of, back because its
    /// dead letter may never have been copied (the copy failed or timed
    /// out after the outcome was recorded): copy it again with this
    /// reason (the copy's dedupe id makes a second copy the same one),
    /// then end it.
    Dead {
        /// Why it died (the job's last error).
        reason: String,
    },
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

/// Whether `id` has the shape [`job_id_for`] gives every job on JetStream
/// (8-4-4-4-12 lowercase hex), so a cancel of a job no host has seen yet
/// can be told from a typo.
pub fn is_job_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
            }
        })
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
    /// Which life of the job this message belongs to (`sluice-replay`: the
    /// job's replay count when it was sent; 0 for the message itself).
    pub replay: u32,
    /// The server's record of this delivery, where it keeps one
    /// (JetStream): which stored message, and how many times it was handed
    /// out, this time included.
    pub server: Option<ServerDelivery>,
}

/// A delivery as the server counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerDelivery {
    /// The message's stream sequence.
    pub stream_seq: u64,
    /// Times the server delivered it, this delivery included (1: first).
    pub count: u64,
}

/// Deliveries of `d`'s message made since this host last took it (to other
/// hosts: none of them recorded an outcome, or the message would not be
/// here again). `last`: the (sequence, count) this host recorded.
fn deliveries_elsewhere(d: &Delivered, last: (Option<i64>, Option<i64>)) -> u32 {
    let Some(server) = d.server else {
        return 0;
    };
    let seen = match last {
        (Some(seq), Some(count)) if u64::try_from(seq).ok() == Some(server.stream_seq) => {
            u64::try_from(count).unwrap_or(0)
        }
        _ => 0,
    };
    let missed = server.count.saturating_sub(seen).saturating_sub(1);
    u32::try_from(missed).unwrap_or(u32::MAX)
}

/// Whether `d` is the latest message of its job this host knows of (its
/// stream sequence is not below the delivery this host last took, `last`):
/// of a dead job, that is the message it died of, which stays unsettled
/// until its dead letter is copied. An older one is back only because its
/// ack was lost; its job went on in a later message.
fn is_latest(d: &Delivered, last: Option<i64>) -> bool {
    match (d.server, last.and_then(|l| u64::try_from(l).ok())) {
        (Some(server), Some(last)) => server.stream_seq >= last,
        _ => true,
    }
}

/// The server's record of a delivery as two columns.
fn server_columns(d: &Delivered) -> (Option<i64>, Option<i64>) {
    d.server.map_or((None, None), |s| {
        (
            i64::try_from(s.stream_seq).ok(),
            i64::try_from(s.count).ok(),
        )
    })
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

impl Store {
    /// Records the jobs of delayed messages this host published straight
    /// to the stream (`sluice post --delay`, the API's `delay=`), one per
    /// handler this host knows for the channel (the consumers table), as
    /// `scheduled` until due, so the job list and `GET /v1/jobs/{id}` show
    /// them from the moment they are posted; the delivery, on whichever
    /// host, carries the job on from there (and the reconciler resolves
    /// this record if another host ran it). Returns the job ids recorded;
    /// a job this host has already is left as it is.
    pub async fn record_delayed_posts(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<String>, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            let mut recorded = Vec::new();
            for m in messages.iter().filter(|m| m.visible_at > now) {
                let msg = &m.message;
                let headers = serde_json::to_string(&msg.headers)
                    .map_err(|e| StoreError::Corrupt(format!("headers: {e}")))?;
                for consumer in super::jobs::consumers_of(conn, &msg.channel)? {
                    let id = job_id_for(&msg.id, &consumer);
                    let inserted = conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO jobs (id, message_id, channel, consumer, kind,
                                 headers, body, state, attempts, slices, visible_at, expires_at,
                                 created_at, updated_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'scheduled', 0, 0, ?8, ?9, ?10,
                                 ?10)",
                        )?
                        .execute(params![
                            id,
                            msg.id,
                            msg.channel,
                            consumer,
                            msg.kind.as_str(),
                            headers,
                            msg.body,
                            m.visible_at,
                            m.expires_at,
                            now,
                        ])?;
                    if inserted == 1 {
                        recorded.push(id);
                    }
                }
            }
            Ok(recorded)
        })
        .await
    }
}

pub(super) fn receive_one(
    conn: &rusqlite::Connection,
    d: Delivered,
    now: i64,
) -> Result<Received, StoreError> {
    let id = job_id_for(&d.message.id, &d.consumer);
    type Row = (
        String,
        u32,
        u32,
        i64,
        u32,
        Option<i64>,
        Option<i64>,
        Option<String>,
        String,
    );
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT state, attempts, slices, visible_at, replays, delivery_seq, delivery_count,
                 last_error, message_id
             FROM jobs WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .optional()?;
    let not_yet = d.not_before.filter(|t| *t > now);
    let (delivery_seq, delivery_count) = server_columns(&d);
    let attempts = match row {
        None => {
            // Every earlier delivery of this message went to other hosts.
            let attempts = d
                .attempts_before
                .saturating_add(deliveries_elsewhere(&d, (None, None)))
                .saturating_add(1);
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
                     started_at, updated_at, delivery_seq, delivery_count, replays)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?14,
                     ?16, ?17, ?18)",
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
                    attempts
                },
                d.slice,
                not_yet.unwrap_or(now),
                d.expires_at,
                d.cursor,
                now,
                not_yet.map_or(Some(now), |_| None),
                delivery_seq,
                delivery_count,
                d.replay,
            ])?;
            if let Some(at) = not_yet {
                return Ok(Received::NotYet(at));
            }
            attempts
        }
        Some((
            state,
            attempts,
            slices,
            visible_at,
            replays,
            last_seq,
            last_count,
            error,
            known,
        )) => {
            let state = JobState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown job state {state:?}")))?;
            if state == JobState::Cancelled && known.is_empty() {
                // Cancelled before any host had it (the cancel named only
                // the job id): its record learns what it was.
                let headers = serde_json::to_string(&d.message.headers)
                    .map_err(|e| StoreError::Corrupt(format!("headers: {e}")))?;
                conn.prepare_cached(
                    "UPDATE jobs SET message_id = ?2, channel = ?3, consumer = ?4, kind = ?5,
                         headers = ?6, body = ?7, expires_at = ?8, updated_at = ?9
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    d.message.id,
                    d.message.channel,
                    d.consumer,
                    d.message.kind.as_str(),
                    headers,
                    d.message.body,
                    d.expires_at,
                    now,
                ])?;
                return Ok(Received::Done(state));
            }
            // A message of an earlier life (before a replay this host
            // knows of) is over with.
            if d.replay < replays {
                return Ok(Received::Done(state));
            }
            // A message of a later life: the job was replayed elsewhere
            // (from a dead record there) and this host's record, final or
            // not, belongs to a life that is over. The new life starts
            // here as it started there: no attempts yet, at the replay's
            // slice.
            let (state, attempts, slices, replays) = if d.replay > replays {
                conn.prepare_cached(
                    "UPDATE jobs SET state = 'queued', attempts = 0, slices = ?2,
                         finished_at = NULL, replays = ?3, updated_at = ?4
                     WHERE id = ?1",
                )?
                .execute(params![id, d.slice, d.replay, now])?;
                (JobState::Queued, 0, d.slice, d.replay)
            } else {
                (state, attempts, slices, replays)
            };
            if state == JobState::Dead && d.slice == slices && is_latest(&d, last_seq) {
                return Ok(Received::Dead {
                    reason: error.unwrap_or_else(|| "dead".to_owned()),
                });
            }
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
                    super::finish::retry_id(&d.message.id, &d.consumer, replays, slices, attempts);
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
                    "UPDATE jobs SET state = 'scheduled', visible_at = ?2, updated_at = ?3,
                         delivery_seq = COALESCE(?4, delivery_seq),
                         delivery_count = COALESCE(?5, delivery_count)
                     WHERE id = ?1",
                )?
                .execute(params![id, at, now, delivery_seq, delivery_count])?;
                return Ok(Received::NotYet(at));
            }
            // A newer slice than this host has seen starts afresh.
            let attempts = if d.slice > slices {
                d.attempts_before
            } else {
                attempts.max(d.attempts_before)
            }
            .saturating_add(deliveries_elsewhere(&d, (last_seq, last_count)))
            .saturating_add(1);
            conn.prepare_cached(
                "UPDATE jobs SET state = 'running', attempts = ?2, slices = ?3,
                     cursor = COALESCE(?4, cursor), started_at = COALESCE(started_at, ?5),
                     updated_at = ?5, delivery_seq = COALESCE(?6, delivery_seq),
                     delivery_count = COALESCE(?7, delivery_count)
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                attempts,
                d.slice.max(slices),
                d.cursor,
                now,
                delivery_seq,
                delivery_count
            ])?;
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
