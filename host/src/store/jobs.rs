//! Jobs: publishing (routing a message to each handler of its channel),
//! claiming, finishing with effects in one transaction, and the queries the
//! CLI and API need.
//!
//! Routing follows Brighter's recipient list: a message gets one job per
//! handler registered for its channel. A message for a channel nobody
//! handles yet is kept as one "unrouted" job (consumer `''`) and is routed the
//! moment a handler registers, so nothing posted early is lost.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::finish::*;
use super::records::{ClaimedJob, JobRecord, JobState};
use super::state::{self, StateCommit};
use super::{Store, StoreError};
use crate::message::{Message, MessageKind, new_id, now_ms};

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The message (its id makes the post idempotent per handler).
    pub message: Message,
    /// Unix ms from which it may run (now or earlier: at once).
    pub visible_at: i64,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
}

/// What publishing one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id.
    pub message_id: String,
    /// One job per handler (or one unrouted job).
    pub job_ids: Vec<String>,
    /// True when the id had been posted before: nothing new was enqueued.
    pub duplicate: bool,
    /// The message holding the post's uniqueness key (`sluice-unique`):
    /// nothing new was enqueued, and `message_id`/`job_ids` are the
    /// holder's.
    pub duplicate_of: Option<String>,
    /// Jobs of the key's previous holder this post cancelled
    /// (`sluice-on-duplicate: replace`).
    pub replaced: Vec<String>,
    /// JetStream: the key's previous holder this post replaced (its jobs,
    /// recorded by whichever hosts receive it, are cancelled there; the
    /// API names them in `replaced`).
    pub replaced_message: Option<String>,
}

/// How a job's current call ended, and what to record.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Done: apply the effects, record the result.
    Succeeded {
        /// The handler's result.
        result: Option<String>,
        /// The effects to apply.
        commit: Commit,
    },
    /// A slice is done: apply its effects, record the cursor, schedule the
    /// next slice.
    Continue {
        /// Where the next slice starts.
        cursor: String,
        /// Unix ms of the next slice.
        visible_at: i64,
        /// The effects to apply.
        commit: Commit,
    },
    /// Failed; try again at `visible_at`.
    Retry {
        /// Why.
        error: String,
        /// Unix ms of the next attempt.
        visible_at: i64,
    },
    /// Failed for good: a dead letter.
    Dead {
        /// Why.
        error: String,
    },
    /// Started too late.
    Expired,
    /// Interrupted by an operator while running: final, like a cancel of
    /// a queued job.
    Cancelled {
        /// Why, for the record.
        reason: String,
    },
    /// Handed back unrun (shutdown, missing plugin): the attempt does not
    /// count.
    Release {
        /// Unix ms from which it may run again.
        visible_at: i64,
        /// Why, for the record.
        reason: String,
    },
}

/// The effects of a successful call.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Last progress reported: percent and note.
    pub progress: Option<(u8, Option<String>)>,
    /// What the call read and changed in its plugin's state.
    pub state: StateCommit,
    /// Messages posted, already mapped to wire form.
    pub posts: Vec<NewMessage>,
}

/// What a call to [`Store::finish`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishResult {
    /// Recorded (with effects, if any).
    Committed {
        /// Jobs created by the posts.
        posted: Vec<Published>,
        /// State keys stored under another version than the commit carried
        /// (see `store/state.rs`); the ledger must forget its view of them.
        reassigned: Vec<String>,
    },
    /// The state the call read changed meanwhile: nothing was applied and the
    /// job is queued again at once without losing an attempt (the conflict
    /// is counted in its record).
    Conflict,
    /// The job was no longer running this attempt (e.g. cancelled): nothing
    /// was applied.
    Stale,
}

/// Which plugin version ran a call and what it cost.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    /// The plugin's version.
    pub plugin_version: Option<String>,
    /// The plugin's content hash.
    pub plugin_hash: Option<String>,
    /// Fuel the call used.
    pub fuel_used: u64,
    /// Re-runs this attempt needed because its state changed under it.
    pub conflicts: u32,
}

/// A filter for [`Store::jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs on this channel.
    pub channel: Option<String>,
    /// At most this many, newest first (0: 100).
    pub limit: usize,
}

pub(super) const RECORD_COLUMNS: &str = "id, message_id, channel, consumer, kind, headers, body, state, \
     attempts, slices, visible_at, expires_at, cursor, progress, progress_note, result, \
     last_error, plugin_version, plugin_hash, fuel_used, replays, created_at, started_at, \
     finished_at, updated_at, conflicts";

impl Store {
    /// Enqueues messages: one job per registered handler of each channel.
    /// Re-posting a message id is a no-op that returns the existing jobs.
    pub async fn publish(&self, messages: Vec<NewMessage>) -> Result<Vec<Published>, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            let mut routes = Routes::default();
            messages
                .iter()
                .map(|m| publish_one(conn, &mut routes, m, None, now))
                .collect()
        })
        .await
    }

    /// Records that these handlers consume these channels (idempotent) and
    /// routes every unrouted job of those channels to them.
    pub async fn register_consumers(
        &self,
        subscriptions: Vec<(String, String)>,
    ) -> Result<usize, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            add_consumers(conn, &subscriptions, now)?;
            let mut routed = 0;
            let mut channels: Vec<&String> = subscriptions.iter().map(|(c, _)| c).collect();
            channels.dedup();
            for channel in channels {
                routed += route_unrouted(conn, channel, now)?;
            }
            Ok(routed)
        })
        .await
    }

    /// Records that these handlers consume these channels (idempotent),
    /// routing nothing: on JetStream no job waits unrouted in this store
    /// (jobs are recorded on delivery), so a start scans no jobs.
    pub async fn record_consumers(
        &self,
        subscriptions: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        self.call(move |conn| add_consumers(conn, &subscriptions, now_ms()))
            .await
    }

    /// Forgets every (channel, handler) pair of the consumers table whose
    /// handler is one of `handlers` but that is not in `keep`: the
    /// handler's loaded version no longer lists the channel. Jobs already
    /// queued for it stay (they run if a version listing it comes back).
    /// Returns the pairs forgotten.
    pub async fn retire_consumers(
        &self,
        handlers: Vec<String>,
        keep: Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.call(move |conn| {
            let keep: std::collections::HashSet<(String, String)> = keep.into_iter().collect();
            let mut forgotten = Vec::new();
            for handler in &handlers {
                let channels: Vec<String> = conn
                    .prepare_cached("SELECT channel FROM consumers WHERE consumer = ?1")?
                    .query_map(params![handler], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for channel in channels {
                    let pair = (channel, handler.clone());
                    if !keep.contains(&pair) {
                        conn.prepare_cached(
                            "DELETE FROM consumers WHERE channel = ?1 AND consumer = ?2",
                        )?
                        .execute(params![pair.0, pair.1])?;
                        forgotten.push(pair);
                    }
                }
            }
            Ok(forgotten)
        })
        .await
    }

    /// Claims up to `max` runnable jobs of `(channel, consumer)`: they become
    /// `running` and their attempt count goes up. Only one claimer can get a
    /// job: claims run one at a time on the writer thread.
    pub async fn claim(
        &self,
        channel: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let (channel, consumer) = (channel.to_owned(), consumer.to_owned());
        // One write statement, but reading its rows can fail after SQLite
        // applied it (a row's kind or headers unreadable): the savepoint
        // undoes the claim then, or the healthy jobs claimed with the bad
        // one would stay `running` with no one running them.
        self.writer
            .submit(move |conn| claim(conn, &channel, &consumer, max, now_ms()))?
            .await
    }

    /// Records how attempt `attempt` of job `job_id` ended; a success's
    /// effects (state writes, posts, progress) commit in the same transaction.
    pub async fn finish(
        &self,
        job_id: &str,
        attempt: u32,
        call: CallRecord,
        finish: Finish,
    ) -> Result<FinishResult, StoreError> {
        self.submit_finish(job_id, attempt, call, finish)?.await
    }

    /// [`Store::finish`], queued on the writer before this returns: finishes
    /// submitted one after the other are applied in that order. The state
    /// ledger submits under its lock, so the order in which it handed out
    /// state versions is the order the writer checks them in.
    pub fn submit_finish(
        &self,
        job_id: &str,
        attempt: u32,
        call: CallRecord,
        finish: Finish,
    ) -> Result<impl Future<Output = Result<FinishResult, StoreError>> + Send + 'static, StoreError>
    {
        let job_id = job_id.to_owned();
        let outbox = self.outbox;
        let versions = Arc::clone(&self.versions);
        if let Finish::Succeeded { result, commit } = &finish
            && commit.state.is_empty()
            && commit.posts.is_empty()
        {
            // The hot path of a drain: one UPDATE, so no savepoint.
            let (result, note) = (result.clone(), commit.progress.clone().and_then(|p| p.1));
            let future = self.writer.submit_single(move |conn| {
                bare_success(conn, &job_id, attempt, &call, result, note, now_ms())
            })?;
            return Ok(futures_util::future::Either::Left(future));
        }
        let future = self.writer.submit(move |conn| {
            let ctx = FinishCtx {
                outbox,
                versions: &versions,
                now: now_ms(),
            };
            finish_job(conn, &job_id, attempt, &call, finish, &ctx)
        })?;
        Ok(futures_util::future::Either::Right(future))
    }

    /// At daemon start: jobs left `running` by a previous process that died
    /// are queued again (the attempt they were on counts).
    pub async fn recover_running(&self) -> Result<usize, StoreError> {
        self.call(|conn| {
            let now = now_ms();
            Ok(conn.execute(
                "UPDATE jobs SET state = 'queued', visible_at = ?1, updated_at = ?1,
                     last_error = COALESCE(last_error, 'host stopped while running')
                 WHERE state = 'running'",
                params![now],
            )?)
        })
        .await
    }

    /// One job (read on the reader connection: never waits for, or holds
    /// up, a commit).
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1");
            let mut stmt = conn.prepare_cached(&sql)?;
            stmt.query_row(params![id], record).optional()?.transpose()
        })
        .await
    }

    /// Jobs matching `filter`, newest first.
    pub async fn jobs(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        // The first page of the keyset-paged query.
        self.jobs_page(filter, None).await
    }

    /// Puts a dead letter back in the queue with a fresh set of attempts.
    /// False when `id` is not a dead letter.
    pub async fn replay(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| Ok(replay(conn, Some(&id), now_ms())? > 0))
            .await
    }

    /// Puts a dead letter back for an external transport: in the same
    /// transaction as the job's return to the queue, the message that
    /// resumes it (addressed to its handler, from its cursor, its body
    /// byte for byte) goes to the outbox, so a publish that fails later
    /// loses nothing (the relay retries it). False when `id` is not a dead
    /// letter.
    pub async fn replay_via_outbox(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let now = now_ms();
            if replay(conn, Some(&id), now)? == 0 {
                return Ok(false);
            }
            replay_message(conn, &id, now)?;
            Ok(true)
        })
        .await
    }

    /// Replays every dead letter; returns how many.
    pub async fn replay_all(&self) -> Result<usize, StoreError> {
        self.call(|conn| replay(conn, None, now_ms())).await
    }

    /// Deletes finished jobs (succeeded, expired, cancelled) that finished
    /// before `before_ms`, and outbox rows sent before then; uniqueness
    /// keys past their time-to-live, and debounce keys older than
    /// `before_ms` whose message waits no more. Dead letters stay until
    /// replayed or purged.
    pub async fn prune(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.call(move |conn| {
            let jobs = conn.execute(
                "DELETE FROM jobs WHERE state IN ('succeeded', 'expired', 'cancelled')
                 AND finished_at < ?1",
                params![before_ms],
            )?;
            let sent = conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?1",
                params![before_ms],
            )?;
            let tombstones = state::prune_tombstones(conn, before_ms)?;
            let keys =
                super::unique::prune(conn, now_ms())? + super::debounce::prune(conn, before_ms)?;
            Ok(jobs + sent + tombstones + keys)
        })
        .await
    }
}

/// The handlers of each channel, looked up once per store operation (the
/// consumers table only changes in an operation of its own).
#[derive(Default)]
pub(super) struct Routes(HashMap<String, Vec<String>>);

impl Routes {
    /// Who gets a copy of a message on `channel`: its handlers, or the
    /// unrouted consumer `''` while it has none.
    fn of(&mut self, conn: &Connection, channel: &str) -> Result<&[String], StoreError> {
        if !self.0.contains_key(channel) {
            let mut consumers = consumers_of(conn, channel)?;
            if consumers.is_empty() {
                consumers.push(String::new());
            }
            self.0.insert(channel.to_owned(), consumers);
        }
        Ok(self.0.get(channel).map_or(&[], Vec::as_slice))
    }
}

/// Inserts one job per handler of the message's channel; `parent` is the
/// job whose handler posted it, if one did.
pub(super) fn publish_one(
    conn: &Connection,
    routes: &mut Routes,
    m: &NewMessage,
    parent: Option<&str>,
    now: i64,
) -> Result<Published, StoreError> {
    let msg = &m.message;
    let mut replaced = Vec::new();
    if let Some(unique) = crate::message::options::unique(&msg.headers) {
        match super::unique::claim(conn, &msg.channel, &msg.id, &unique, now)? {
            super::unique::Claim::Post => {}
            super::unique::Claim::Replaced { cancelled } => replaced = cancelled,
            super::unique::Claim::Rejected {
                message_id,
                job_ids,
            } => {
                tracing::info!(channel = %msg.channel, key = %unique.key, message_id = %msg.id, holder = %message_id, "post refused: another message holds its unique key");
                return Ok(Published {
                    duplicate_of: Some(message_id.clone()),
                    message_id,
                    job_ids,
                    duplicate: true,
                    replaced,
                    replaced_message: None,
                });
            }
        }
    }
    let mut visible_at = m.visible_at;
    if let Some((key, window)) = crate::message::options::debounce(&msg.headers) {
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        match super::debounce::claim(conn, m, &key, window, now)? {
            super::debounce::Debounced::Post { due } => visible_at = due,
            super::debounce::Debounced::Merged {
                message_id,
                job_ids,
            } => {
                return Ok(Published {
                    message_id,
                    job_ids,
                    duplicate: false,
                    duplicate_of: None,
                    replaced,
                    replaced_message: None,
                });
            }
        }
    }
    let consumers = routes.of(conn, &msg.channel)?;
    let state = if visible_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    };
    let headers = serde_json::to_string(&msg.headers)
        .map_err(|e| StoreError::Corrupt(format!("headers: {e}")))?;
    let priority = crate::message::options::Options::of(&msg.headers).priority;
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (id, message_id, channel, consumer, kind, headers, body, state,
             visible_at, expires_at, created_at, updated_at, parent_id, priority)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13)
         ON CONFLICT (message_id, consumer) DO NOTHING",
    )?;
    let mut job_ids = Vec::with_capacity(consumers.len());
    let mut duplicate = false;
    for consumer in consumers {
        let id = new_id();
        let inserted = insert.execute(params![
            id,
            msg.id,
            msg.channel,
            consumer,
            msg.kind.as_str(),
            headers,
            msg.body,
            state.as_str(),
            visible_at,
            m.expires_at,
            now,
            parent,
            priority
        ])?;
        if inserted == 1 {
            job_ids.push(id);
        } else {
            duplicate = true;
            let mut existing =
                conn.prepare_cached("SELECT id FROM jobs WHERE message_id = ?1 AND consumer = ?2")?;
            job_ids.push(existing.query_row(params![msg.id, consumer], |r| r.get(0))?);
        }
    }
    Ok(Published {
        message_id: msg.id.clone(),
        job_ids,
        duplicate,
        duplicate_of: None,
        replaced,
        replaced_message: None,
    })
}

fn add_consumers(
    conn: &Connection,
    pairs: &[(String, String)],
    now: i64,
) -> Result<(), StoreError> {
    let mut add = conn.prepare_cached(
        "INSERT OR IGNORE INTO consumers (channel, consumer, created_at) VALUES (?1, ?2, ?3)",
    )?;
    for (channel, consumer) in pairs {
        add.execute(params![channel, consumer, now])?;
    }
    Ok(())
}

pub(super) fn consumers_of(conn: &Connection, channel: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT consumer FROM consumers WHERE channel = ?1 ORDER BY consumer")?;
    let rows = stmt.query_map(params![channel], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Gives each unrouted job of `channel` to the channel's handlers: the first
/// handler takes the row itself (so its job id stays valid), the others get
/// copies.
fn route_unrouted(conn: &Connection, channel: &str, now: i64) -> Result<usize, StoreError> {
    let consumers = consumers_of(conn, channel)?;
    let Some((first, others)) = consumers.split_first() else {
        return Ok(0);
    };
    let ids: Vec<String> = {
        let mut stmt =
            conn.prepare_cached("SELECT id FROM jobs WHERE channel = ?1 AND consumer = ''")?;
        let rows = stmt.query_map(params![channel], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut copy = conn.prepare_cached(
        "INSERT OR IGNORE INTO jobs (id, message_id, channel, consumer, kind, headers, body, state,
             visible_at, expires_at, created_at, updated_at, parent_id, priority)
         SELECT ?1, message_id, channel, ?2, kind, headers, body, state, visible_at, expires_at,
             created_at, ?3, parent_id, priority
         FROM jobs WHERE id = ?4",
    )?;
    let mut take = conn
        .prepare_cached("UPDATE OR IGNORE jobs SET consumer = ?1, updated_at = ?2 WHERE id = ?3")?;
    for id in &ids {
        for other in others {
            copy.execute(params![new_id(), other, now, id])?;
        }
        take.execute(params![first, now, id])?;
    }
    Ok(ids.len())
}

/// A claim: with a due job above priority 0, the part `flow::priority`
/// gives to priority goes to the most urgent (`store/priority.rs`) and the
/// rest in queue order, else all in queue order. One write statement
/// either way.
fn claim(
    conn: &Connection,
    channel: &str,
    consumer: &str,
    max: usize,
    now: i64,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let urgent = crate::flow::priority::urgent_share(max);
    if urgent > 0 && super::priority::urgent_due(conn, channel, consumer, now)? {
        let mut out =
            super::priority::claim_mixed(conn, channel, consumer, (urgent, max - urgent), now)?;
        out.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        return Ok(out);
    }
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1,
             started_at = COALESCE(started_at, ?3), updated_at = ?3
         WHERE id IN (
             SELECT id FROM jobs
             WHERE channel = ?1 AND consumer = ?2
               AND state IN ('queued', 'scheduled', 'retrying') AND visible_at <= ?3
             ORDER BY visible_at, id LIMIT ?4)
         RETURNING id, message_id, kind, headers, body, attempts, cursor, expires_at",
    )?;
    let mut out = claimed(
        &mut stmt,
        params![channel, consumer, now, max as i64],
        channel,
        consumer,
    )?;
    out.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    Ok(out)
}

/// The jobs a claim statement returned (`id, message_id, kind, headers,
/// body, attempts, cursor, expires_at`).
pub(super) fn claimed(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    channel: &str,
    consumer: &str,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Vec<u8>>(4)?,
            r.get::<_, u32>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, Option<i64>>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (job_id, message_id, kind, headers, body, attempt, cursor, expires_at) = row?;
        out.push(ClaimedJob {
            job_id,
            consumer: consumer.to_owned(),
            message: Message {
                id: message_id,
                channel: channel.to_owned(),
                kind: parse_kind(&kind)?,
                headers: parse_headers(&headers)?,
                body,
            },
            attempt,
            cursor,
            expires_at,
        });
    }
    Ok(out)
}

fn replay(conn: &Connection, id: Option<&str>, now: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE jobs SET state = CASE WHEN cursor IS NULL THEN 'queued' ELSE 'scheduled' END,
             attempts = 0, visible_at = ?2, finished_at = NULL, replays = replays + 1,
             updated_at = ?2
         WHERE state = 'dead' AND (?1 IS NULL OR id = ?1)",
        params![id, now],
    )?)
}

pub(super) fn parse_kind(kind: &str) -> Result<MessageKind, StoreError> {
    MessageKind::parse(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown message kind {kind:?}")))
}

pub(super) fn parse_headers(headers: &str) -> Result<Vec<(String, String)>, StoreError> {
    serde_json::from_str(headers).map_err(|e| StoreError::Corrupt(format!("headers: {e}")))
}

/// Reads one `RECORD_COLUMNS` row. The outer `Result` is rusqlite's, the
/// inner one ours (unknown state, bad headers).
pub(super) fn record(r: &Row<'_>) -> rusqlite::Result<Result<JobRecord, StoreError>> {
    let state: String = r.get(7)?;
    let headers: String = r.get(5)?;
    let body: Vec<u8> = r.get(6)?;
    let Some(state) = JobState::parse(&state) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "unknown job state {state:?}"
        ))));
    };
    let headers = match parse_headers(&headers) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(JobRecord {
        id: r.get(0)?,
        message_id: r.get(1)?,
        channel: r.get(2)?,
        consumer: r.get(3)?,
        kind: r.get(4)?,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        state,
        attempts: r.get(8)?,
        slices: r.get(9)?,
        visible_at: r.get(10)?,
        expires_at: r.get(11)?,
        cursor: r.get(12)?,
        progress: r.get(13)?,
        progress_note: r.get(14)?,
        result: r.get(15)?,
        last_error: r.get(16)?,
        plugin_version: r.get(17)?,
        plugin_hash: r.get(18)?,
        fuel_used: r.get::<_, i64>(19)? as u64,
        replays: r.get(20)?,
        created_at: r.get(21)?,
        started_at: r.get(22)?,
        finished_at: r.get(23)?,
        updated_at: r.get(24)?,
        conflicts: r.get(25)?,
    }))
}
