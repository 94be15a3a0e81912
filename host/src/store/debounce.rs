//! Debounce on the embedded queue (`sluice-debounce`, see
//! `crate::message::options`): a post with a key whose previous message
//! is still waiting out its window does not queue a job of its own; it
//! becomes that waiting job (its body and headers replace the job's, and
//! the window starts again), so only the last message of a burst runs,
//! once no post came for the window. Done in `publish_one`'s transaction:
//! the writer thread orders the posts and the claim, so a post either
//! lands in the waiting job or (the job was claimed already) starts a new
//! window with a job of its own.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::StoreError;
use super::jobs::NewMessage;

/// What became of a post with a debounce key.
pub(super) enum Debounced {
    /// No job of the key is waiting: post it (due at `due`); the key
    /// names it now.
    Post {
        /// When it may run: the end of its window.
        due: i64,
    },
    /// Merged into the waiting message `message_id` (jobs `job_ids`).
    Merged {
        /// The waiting message.
        message_id: String,
        /// Its jobs.
        job_ids: Vec<String>,
    },
}

/// Looks up `key`'s waiting message on `m`'s channel and merges `m` into
/// it, or names `m` as the key's message.
pub(super) fn claim(
    conn: &Connection,
    m: &NewMessage,
    key: &str,
    window_ms: i64,
    now: i64,
) -> Result<Debounced, StoreError> {
    let msg = &m.message;
    let due = m.visible_at.max(now.saturating_add(window_ms));
    // A message posted before is a duplicate of itself, merged nowhere.
    let posted: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM jobs WHERE message_id = ?1 LIMIT 1")?
        .query_row(params![msg.id], |r| r.get(0))
        .optional()?;
    if posted.is_some() {
        return Ok(Debounced::Post { due: m.visible_at });
    }
    let holder: Option<String> = conn
        .prepare_cached("SELECT message_id FROM debounce_keys WHERE channel = ?1 AND key = ?2")?
        .query_row(params![msg.channel, key], |r| r.get(0))
        .optional()?;
    if let Some(holder) = holder.filter(|h| *h != msg.id) {
        let headers = serde_json::to_string(&msg.headers)
            .map_err(|e| StoreError::Corrupt(format!("headers: {e}")))?;
        let merged = conn
            .prepare_cached(
                "UPDATE jobs SET body = ?2, headers = ?3, visible_at = ?4, updated_at = ?5
                 WHERE message_id = ?1 AND state = 'scheduled'",
            )?
            .execute(params![holder, msg.body, headers, due, now])?;
        if merged > 0 {
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM jobs WHERE message_id = ?1 AND state = 'scheduled'",
            )?;
            let job_ids = stmt
                .query_map(params![holder], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            return Ok(Debounced::Merged {
                message_id: holder,
                job_ids,
            });
        }
    }
    conn.prepare_cached(
        "INSERT INTO debounce_keys (channel, key, message_id, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (channel, key) DO UPDATE SET message_id = ?3, created_at = ?4",
    )?
    .execute(params![msg.channel, key, msg.id, now])?;
    Ok(Debounced::Post { due })
}

/// Drops the keys written before `before_ms` whose message waits no more
/// (its job ran, or was pruned): a post of such a key would find nothing
/// to merge into and start a window of its own anyway. How many.
pub(super) fn prune(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM debounce_keys WHERE created_at < ?1 AND NOT EXISTS (
             SELECT 1 FROM jobs WHERE jobs.message_id = debounce_keys.message_id
                 AND jobs.state = 'scheduled')",
        params![before_ms],
    )?)
}
