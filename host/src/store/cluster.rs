//! The store operations behind the view shared by the hosts of one
//! JetStream (`crate::cluster`): a host's record of a job that another host
//! carried on and finished, and an operator's cancel made on another host.
//!
//! On JetStream a job's record lives in the SQLite of every host that had
//! one of its deliveries: host A records `retrying` and hands the retry to
//! the stream, host B runs it and records `succeeded`. Without these, A's
//! row would stay `retrying` for ever.

use rusqlite::{OptionalExtension, params};

use super::finish::{FinishCtx, finish_job};
use super::jobs::{CallRecord, Finish, FinishResult};
use super::records::JobState;
use super::{Store, StoreError};
use crate::message::now_ms;

/// A waiting job of this host, as the reconciler pages through them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Job id.
    pub id: String,
    /// Its channel (with `created_at` and `id`, the page cursor).
    pub channel: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last change here.
    pub updated_at: i64,
    /// Unix ms from which it may run.
    pub visible_at: i64,
    /// Times replayed from the dead letters.
    pub replays: u32,
}

/// How another host ended a job, as this host records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedElsewhere {
    /// Its final state.
    pub state: JobState,
    /// The result, if it succeeded with one.
    pub result: Option<String>,
    /// Why it ended, if not a success.
    pub last_error: Option<String>,
    /// Unix ms of the end.
    pub finished_at: i64,
}

/// What a cancel made on another host found here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteCancel {
    /// It was waiting here (or unknown here: recorded as cancelled, so a
    /// delivery that reaches this host later is acked without running).
    Cancelled,
    /// This host is running it: interrupt the call.
    Running,
    /// It had ended here already.
    Finished,
}

impl Store {
    /// One page of this host's waiting jobs in `state` (queued, scheduled,
    /// retrying), after `after` = (channel, created_at, id), in index order.
    pub async fn waiting_page(
        &self,
        state: JobState,
        after: Option<(String, i64, String)>,
        limit: usize,
    ) -> Result<Vec<Waiting>, StoreError> {
        self.read(move |conn| {
            let (channel, created, id) = after.unwrap_or_default();
            let mut stmt = conn.prepare_cached(
                "SELECT id, channel, created_at, updated_at, visible_at, replays
                 FROM jobs INDEXED BY jobs_by_state
                 WHERE state = ?1 AND (channel, created_at, id) > (?2, ?3, ?4)
                 ORDER BY channel, created_at, id LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![state.as_str(), channel, created, id, limit as i64],
                |r| {
                    Ok(Waiting {
                        id: r.get(0)?,
                        channel: r.get(1)?,
                        created_at: r.get(2)?,
                        updated_at: r.get(3)?,
                        visible_at: r.get(4)?,
                        replays: r.get(5)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Ids of jobs that ended here since `since_ms`, among the `scan` most
    /// recently recorded (a range of the rowid, not a table scan): at start
    /// the status board shares them again, in case the process that ended
    /// them was killed before it shared them.
    pub async fn recently_ended(
        &self,
        since_ms: i64,
        scan: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM (SELECT id, state, updated_at FROM jobs ORDER BY rowid DESC LIMIT ?2)
                 WHERE updated_at >= ?1
                   AND state IN ('succeeded', 'dead', 'expired', 'cancelled')",
            )?;
            let rows = stmt.query_map(params![since_ms, scan as i64], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// Records that another host ended job `id` as `ended`, if it is still
    /// waiting here and has not changed here since `seen_at` (its
    /// `updated_at` when the reconciler looked). True when recorded.
    pub async fn ended_elsewhere(
        &self,
        id: &str,
        seen_at: i64,
        ended: EndedElsewhere,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE jobs SET state = ?2, result = COALESCE(?3, result),
                         last_error = ?4, finished_at = ?5, updated_at = ?6,
                         progress = CASE WHEN ?2 = 'succeeded' THEN 100 ELSE progress END
                     WHERE id = ?1 AND updated_at = ?7
                       AND state IN ('queued', 'scheduled', 'retrying')",
                )?
                .execute(params![
                    id,
                    ended.state.as_str(),
                    ended.result,
                    ended.last_error,
                    ended.finished_at,
                    now_ms(),
                    seen_at
                ])?;
            Ok(changed > 0)
        })
        .await
    }

    /// Applies a cancel an operator made on another host to job `id` (of
    /// `message_id` for handler `consumer` on `channel`; all three empty
    /// when no host had the job yet: its record is filled in when its
    /// message arrives, see `inbox`). `why`: the reason recorded, when
    /// it was not an operator (a replace post of its uniqueness key).
    pub async fn cancel_from_elsewhere(
        &self,
        id: &str,
        message_id: &str,
        channel: &str,
        consumer: &str,
        why: Option<&str>,
    ) -> Result<RemoteCancel, StoreError> {
        let (id, message_id, channel, consumer) = (
            id.to_owned(),
            message_id.to_owned(),
            channel.to_owned(),
            consumer.to_owned(),
        );
        let why = why.map(str::to_owned);
        self.call(move |conn| {
            let now = now_ms();
            let reason = match &why {
                Some(why) => why.as_str(),
                None if message_id.is_empty() => "cancelled by an operator before any host had it",
                None => "cancelled by an operator (on another host)",
            };
            let state: Option<String> = conn
                .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            let Some(state) = state else {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO jobs (id, message_id, channel, consumer, kind, headers,
                         body, state, attempts, slices, visible_at, created_at, updated_at,
                         finished_at, last_error)
                     VALUES (?1, ?2, ?3, ?4, 'command', '[]', x'', 'cancelled', 0, 0, ?5, ?5, ?5,
                         ?5, ?6)",
                )?
                .execute(params![id, message_id, channel, consumer, now, reason])?;
                return Ok(RemoteCancel::Cancelled);
            };
            match JobState::parse(&state) {
                Some(JobState::Running) => Ok(RemoteCancel::Running),
                Some(JobState::Queued | JobState::Scheduled | JobState::Retrying) => {
                    conn.prepare_cached(
                        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2,
                             last_error = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, now, reason])?;
                    Ok(RemoteCancel::Cancelled)
                }
                _ => Ok(RemoteCancel::Finished),
            }
        })
        .await
    }

    /// Shared state: job `id` is recorded cancelled here, but its commit
    /// is in the shared store (its marker was found): a host stored its
    /// state batch before the cancel reached it. The marker is the fact, so
    /// its outcome and posts (`finish`, from the marker) are recorded over
    /// the cancel, in one transaction. False when the job is not
    /// cancelled here (nothing changed).
    pub async fn overturn_cancel(&self, id: &str, finish: Finish) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let outbox = self.outbox;
        let versions = std::sync::Arc::clone(&self.versions);
        self.call(move |conn| {
            let attempts: Option<u32> = conn
                .prepare_cached("SELECT attempts FROM jobs WHERE id = ?1 AND state = 'cancelled'")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            let Some(attempts) = attempts else {
                return Ok(false);
            };
            let now = now_ms();
            conn.prepare_cached(
                "UPDATE jobs SET state = 'running', finished_at = NULL, last_error = NULL,
                     updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
            let ctx = FinishCtx {
                outbox,
                versions: &versions,
                now,
            };
            match finish_job(conn, &id, attempts, &CallRecord::default(), finish, &ctx)? {
                FinishResult::Committed { .. } => Ok(true),
                // A marker's outcome carries no state to check.
                other => Err(StoreError::Corrupt(format!(
                    "recording a committed job over its cancel: {other:?}"
                ))),
            }
        })
        .await
    }
}
