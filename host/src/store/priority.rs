//! Priorities on the embedded queue (`crate::flow::priority`): the part of
//! a claim that goes to the most urgent due jobs, highest level first,
//! oldest first within a level. Only jobs posted with a priority above 0
//! are in its index (`jobs_urgent`), so a queue without priorities pays
//! one index probe per claim and its message path no index update. A
//! claim stays ONE write statement (the writer runs it without a
//! savepoint): the urgent and the queue-order part are one `UPDATE`.

use rusqlite::{Connection, params};

use super::StoreError;
use super::jobs::claimed;
use super::records::ClaimedJob;

/// Whether `(channel, consumer)` has a due job above priority 0.
pub(super) fn urgent_due(
    conn: &Connection,
    channel: &str,
    consumer: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_urgent
             WHERE channel = ?1 AND consumer = ?2 AND priority > 0
               AND state IN ('queued', 'scheduled', 'retrying') AND visible_at <= ?3)",
        )?
        .query_row(params![channel, consumer, now], |r| r.get(0))?)
}

/// Claims up to `urgent` due jobs by priority and up to `rest` more in
/// queue order (fewer if the two parts pick the same job), in one
/// statement.
pub(super) fn claim_mixed(
    conn: &Connection,
    channel: &str,
    consumer: &str,
    (urgent, rest): (usize, usize),
    now: i64,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1,
             started_at = COALESCE(started_at, ?3), updated_at = ?3
         WHERE id IN (
             SELECT id FROM (
                 SELECT id FROM jobs INDEXED BY jobs_urgent
                 WHERE channel = ?1 AND consumer = ?2 AND priority > 0
                   AND state IN ('queued', 'scheduled', 'retrying') AND visible_at <= ?3
                 ORDER BY priority DESC, visible_at, id LIMIT ?4)
             UNION
             SELECT id FROM (
                 SELECT id FROM jobs INDEXED BY jobs_ready
                 WHERE channel = ?1 AND consumer = ?2
                   AND state IN ('queued', 'scheduled', 'retrying') AND visible_at <= ?3
                 ORDER BY visible_at, id LIMIT ?5))
         RETURNING id, message_id, kind, headers, body, attempts, cursor, expires_at",
    )?;
    claimed(
        &mut stmt,
        params![channel, consumer, now, urgent as i64, rest as i64],
        channel,
        consumer,
    )
}
