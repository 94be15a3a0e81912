//! The embedded queue's claim for a handler with flow rules
//! (`crate::flow`): the gate reads the due jobs page by page in queue
//! order (the `jobs_ready` index, from its cursor), picks which may start,
//! and only those are claimed, by id. Kept apart from the plain claim
//! (`jobs.rs`), which handlers without flow rules use unchanged.

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::inbox::{Delivered, Received, job_id_for, receive_one};
use super::jobs::{parse_headers, parse_kind};
use super::records::ClaimedJob;
use super::{Store, StoreError};
use crate::flow::{Gate, Lease, Row, SCAN_PAGE, SCAN_PAGES, Scan};
use crate::message::{Message, now_ms};

impl Store {
    /// Claims up to `max` due jobs of `(channel, consumer)` that `gate`
    /// lets start, each with its lease. Runs on the writer thread like
    /// every claim, so a job is handed out once.
    pub async fn claim_gated(
        &self,
        channel: &str,
        consumer: &str,
        max: usize,
        gate: Arc<Gate>,
    ) -> Result<Vec<(ClaimedJob, Lease)>, StoreError> {
        let (channel, consumer) = (channel.to_owned(), consumer.to_owned());
        self.call(move |conn| claim_gated(conn, &channel, &consumer, max, &gate, now_ms()))
            .await
    }
}

fn claim_gated(
    conn: &Connection,
    channel: &str,
    consumer: &str,
    max: usize,
    gate: &Arc<Gate>,
    now: i64,
) -> Result<Vec<(ClaimedJob, Lease)>, StoreError> {
    let mut out = Vec::new();
    // The forward cursor reached the end in this claim.
    let mut forward_done = false;
    for page in 0..SCAN_PAGES {
        // Odd pages go to the back cursor when it has work (`Gate`).
        let next = gate.next_page(page % 2 == 1, forward_done);
        let read = next.is_some();
        if let Some((which, after)) = next {
            let rows = scan(conn, channel, consumer, after.clone(), now)?;
            let full = rows.len() == SCAN_PAGE;
            if which == Scan::Forward && !full {
                forward_done = true;
            }
            gate.offer(which, after, rows, full);
        }
        let picks = gate.pick(max - out.len(), now);
        let mut jobs = Vec::with_capacity(picks.len());
        for pick in &picks {
            match claim_one(conn, channel, consumer, &pick.id, now) {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(e) => {
                    // The savepoint undoes the SQL; give the picks' places
                    // back too (the leases in `out` go back as it drops),
                    // or their keys would count phantom running jobs.
                    drop(gate.claimed(picks, &HashSet::new()));
                    return Err(e);
                }
            }
        }
        let got: HashSet<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
        let mut leases = gate.claimed(picks, &got);
        for job in jobs {
            if let Some(i) = leases.iter().position(|l| l.job_id() == job.job_id) {
                out.push((job, leases.swap_remove(i)));
            }
        }
        // Read on only while there is room and more rows to see.
        if out.len() >= max || !read {
            break;
        }
    }
    Ok(out)
}

/// A page of due rows after `after` in queue order.
fn scan(
    conn: &Connection,
    channel: &str,
    consumer: &str,
    after: Option<(i64, String)>,
    now: i64,
) -> Result<Vec<Row>, StoreError> {
    let (at, id) = after.unwrap_or((i64::MIN, String::new()));
    let mut stmt = conn.prepare_cached(
        "SELECT id, visible_at, headers, body FROM jobs INDEXED BY jobs_ready
         WHERE channel = ?1 AND consumer = ?2
           AND state IN ('queued', 'scheduled', 'retrying') AND visible_at <= ?3
           AND (visible_at, id) > (?4, ?5)
         ORDER BY visible_at, id LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![channel, consumer, now, at, id, SCAN_PAGE as i64],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, visible_at, headers, body) = row?;
        out.push(Row {
            id,
            visible_at,
            headers: parse_headers(&headers)?,
            body,
        });
    }
    Ok(out)
}

/// Claims one job by id if it is still due.
fn claim_one(
    conn: &Connection,
    channel: &str,
    consumer: &str,
    id: &str,
    now: i64,
) -> Result<Option<ClaimedJob>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1,
             started_at = COALESCE(started_at, ?2), updated_at = ?2
         WHERE id = ?1 AND state IN ('queued', 'scheduled', 'retrying') AND visible_at <= ?2
         RETURNING message_id, kind, headers, body, attempts, cursor, expires_at",
    )?;
    let mut rows = stmt.query(params![id, now])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    Ok(Some(ClaimedJob {
        job_id: id.to_owned(),
        consumer: consumer.to_owned(),
        message: Message {
            id: r.get(0)?,
            channel: channel.to_owned(),
            kind: parse_kind(&r.get::<_, String>(1)?)?,
            headers: parse_headers(&r.get::<_, String>(2)?)?,
            body: r.get(3)?,
        },
        attempt: r.get(4)?,
        cursor: r.get(5)?,
        expires_at: r.get(6)?,
    }))
}

/// What recording a gated JetStream delivery did.
#[derive(Debug)]
pub enum GatedReceipt {
    /// As [`Store::receive_all`] says (run it, done already, not yet due).
    Received(Received),
    /// Recorded as waiting: queued again with the reason, the attempt not
    /// counted, no start recorded. The job as it would have run (its
    /// attempt is the one it will make).
    Waiting(ClaimedJob),
}

impl Store {
    /// [`Store::receive_all`] for a gated handler's pull: each delivery
    /// with `Some((reason, at))` is over its limits and, if it would run,
    /// is recorded as waiting until `at` instead (one store operation).
    pub async fn receive_gated(
        &self,
        batch: Vec<(Delivered, Option<(String, i64)>)>,
    ) -> Result<Vec<GatedReceipt>, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            batch
                .into_iter()
                .map(|(d, waiting)| {
                    let Some((reason, at)) = waiting else {
                        return receive_one(conn, d, now).map(GatedReceipt::Received);
                    };
                    let id = job_id_for(&d.message.id, &d.consumer);
                    let started: Option<Option<i64>> = conn
                        .prepare_cached("SELECT started_at FROM jobs WHERE id = ?1")?
                        .query_row(params![id], |r| r.get(0))
                        .optional()?;
                    match receive_one(conn, d, now)? {
                        Received::Run(job) => {
                            conn.prepare_cached(
                                "UPDATE jobs SET state = 'queued', attempts = ?2, visible_at = ?3,
                                     last_error = ?4, started_at = ?5, updated_at = ?6
                                 WHERE id = ?1",
                            )?
                            .execute(params![
                                job.job_id,
                                job.attempt.saturating_sub(1),
                                at,
                                reason,
                                started.flatten(),
                                now
                            ])?;
                            Ok(GatedReceipt::Waiting(job))
                        }
                        other => Ok(GatedReceipt::Received(other)),
                    }
                })
                .collect()
        })
        .await
    }
}
