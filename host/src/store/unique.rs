//! Unique jobs on the embedded queue (`sluice-unique`, see
//! `crate::message::options`): at most one message per (channel, key)
//! waiting or running at once, checked and claimed in the transaction
//! that inserts the message's jobs (`publish_one`). So 64 posts of one key
//! at once make exactly one job: the writer thread runs them one after
//! another, and each later one finds the first's row.
//!
//! A key is held while its row names another message that still has a
//! job waiting or running, and at most until the row's `expires_at` (the
//! post's `sluice-unique-for`). So a key is free again the moment its
//! message's last job ends (succeeded, dead, cancelled, expired), with no
//! release step a crash could skip.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::StoreError;
use crate::message::options::{OnDuplicate, Unique};

/// What the key said about a new post.
pub(super) enum Claim {
    /// Free (or held by this very message): post it.
    Post,
    /// Held by `message_id`, whose jobs are `job_ids`: the post is refused.
    Rejected {
        /// The message holding the key.
        message_id: String,
        /// Its jobs.
        job_ids: Vec<String>,
    },
    /// Held by another message, whose waiting jobs `cancelled` were
    /// cancelled: post it.
    Replaced {
        /// The jobs cancelled.
        cancelled: Vec<String>,
    },
}

/// Checks and claims `unique` on `channel` for message `id`.
pub(super) fn claim(
    conn: &Connection,
    channel: &str,
    id: &str,
    unique: &Unique,
    now: i64,
) -> Result<Claim, StoreError> {
    // A message posted before (a producer's retry of an old id) is a
    // duplicate of itself: it neither claims the key nor replaces its
    // holder (that would cancel live work and queue nothing).
    if !jobs_of(conn, id)?.is_empty() {
        return Ok(Claim::Post);
    }
    let holder: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT message_id, expires_at FROM unique_keys WHERE channel = ?1 AND key = ?2",
        )?
        .query_row(params![channel, unique.key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let holder = match holder {
        // A repost of the holder itself: the jobs table makes it a
        // duplicate of the same message.
        Some((m, _)) if m == id => return Ok(Claim::Post),
        Some((m, until)) if until > now => m,
        _ => {
            take(conn, channel, id, unique, now)?;
            return Ok(Claim::Post);
        }
    };
    let jobs = jobs_of(conn, &holder)?;
    let waiting: Vec<&String> = jobs
        .iter()
        .filter(|(_, s)| matches!(s.as_str(), "queued" | "scheduled" | "retrying"))
        .map(|(j, _)| j)
        .collect();
    let running = jobs.iter().any(|(_, s)| s == "running");
    if waiting.is_empty() && !running {
        take(conn, channel, id, unique, now)?;
        return Ok(Claim::Post);
    }
    // A running job cannot be replaced: the post is refused like a reject.
    if unique.on_duplicate == OnDuplicate::Replace && !running {
        let reason = format!("replaced by message {id} (unique key {})", unique.key);
        let mut cancel = conn.prepare_cached(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2, last_error = ?3
             WHERE id = ?1 AND state IN ('queued', 'scheduled', 'retrying')",
        )?;
        let mut cancelled = Vec::with_capacity(waiting.len());
        for job in waiting {
            if cancel.execute(params![job, now, reason])? > 0 {
                cancelled.push(job.clone());
            }
        }
        take(conn, channel, id, unique, now)?;
        return Ok(Claim::Replaced { cancelled });
    }
    Ok(Claim::Rejected {
        message_id: holder,
        job_ids: jobs.into_iter().map(|(j, _)| j).collect(),
    })
}

/// The key is `id`'s now, until its time-to-live passes.
fn take(
    conn: &Connection,
    channel: &str,
    id: &str,
    unique: &Unique,
    now: i64,
) -> Result<(), StoreError> {
    let until = now.saturating_add(i64::try_from(unique.ttl.as_millis()).unwrap_or(i64::MAX));
    conn.prepare_cached(
        "INSERT INTO unique_keys (channel, key, message_id, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (channel, key) DO UPDATE SET message_id = ?3, expires_at = ?4",
    )?
    .execute(params![channel, unique.key, id, until])?;
    Ok(())
}

/// (job id, state) of every job of message `id` (the jobs table's unique
/// (message_id, consumer) index).
fn jobs_of(conn: &Connection, id: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id, state FROM jobs WHERE message_id = ?1")?;
    let rows = stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Drops the keys whose time-to-live ended before `now` (one is as good
/// as none: `claim` takes it). How many.
pub(super) fn prune(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM unique_keys WHERE expires_at < ?1",
        params![now],
    )?)
}
