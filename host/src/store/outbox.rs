//! The outbox: messages a committed transaction wants published on an
//! external transport (JetStream). Rows are written in the same transaction
//! as the job that produced them and published by the relay only after that
//! commit, in `seq` order, each with a deterministic dedupe id so a re-send
//! is dropped by the broker's duplicate window.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Store, StoreError};
use crate::message::{Message, MessageKind};
use crate::store::NewMessage;

/// One outbox row.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    /// Publish order.
    pub seq: i64,
    /// The broker's dedupe id.
    pub id: String,
    /// `None`: a post to the channel; `Some(handler)`: a continuation for
    /// that handler only.
    pub consumer: Option<String>,
    /// The message.
    #[serde(skip)]
    pub message: Message,
    /// The channel (also in `message`), for listings.
    pub channel: String,
    /// Set on continuations: where the next slice starts.
    pub cursor: Option<String>,
    /// Unix ms from which it may be published.
    pub visible_at: i64,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
    /// Unix ms when it was published; `None` while pending.
    pub sent_at: Option<i64>,
}

/// Writes a post (or, with `consumer`, a continuation) to the outbox, as
/// posted by `job_id`. Idempotent on `id`.
pub(super) fn insert(
    conn: &Connection,
    id: &str,
    consumer: Option<&str>,
    post: &NewMessage,
    cursor: Option<&str>,
    job_id: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let m = &post.message;
    let headers = serde_json::to_string(&m.headers)
        .map_err(|e| StoreError::Corrupt(format!("headers: {e}")))?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox (id, message_id, consumer, channel, kind, headers, body,
             cursor, visible_at, expires_at, created_at, job_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        id,
        m.id,
        consumer,
        m.channel,
        m.kind.as_str(),
        headers,
        m.body,
        cursor,
        post.visible_at,
        post.expires_at,
        now,
        job_id
    ])?;
    Ok(())
}

const COLUMNS: &str = "seq, id, consumer, message_id, channel, kind, headers, body, cursor, \
                       visible_at, expires_at, sent_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutboxRow, StoreError>> {
    let kind: String = r.get(5)?;
    let headers: String = r.get(6)?;
    let Some(kind) = MessageKind::parse(&kind) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "unknown message kind {kind:?}"
        ))));
    };
    let headers = match serde_json::from_str(&headers) {
        Ok(h) => h,
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("headers: {e}")))),
    };
    let channel: String = r.get(4)?;
    Ok(Ok(OutboxRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        consumer: r.get(2)?,
        message: Message {
            id: r.get(3)?,
            channel: channel.clone(),
            kind,
            headers,
            body: r.get(7)?,
        },
        channel,
        cursor: r.get(8)?,
        visible_at: r.get(9)?,
        expires_at: r.get(10)?,
        sent_at: r.get(11)?,
    }))
}

fn collect(
    rows: impl Iterator<Item = rusqlite::Result<Result<OutboxRow, StoreError>>>,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r??);
    }
    Ok(out)
}

impl Store {
    /// Unsent rows due by `now`, oldest first, at most `limit`.
    pub async fn outbox_due(&self, now: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.call(move |conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM outbox WHERE sent_at IS NULL AND visible_at <= ?1
                 ORDER BY seq LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            collect(stmt.query_map(params![now, limit as i64], row)?)
        })
        .await
    }

    /// When the next unsent row falls due (Unix ms), if any.
    pub async fn outbox_next_due(&self) -> Result<Option<i64>, StoreError> {
        self.call(|conn| {
            Ok(conn
                .prepare_cached("SELECT MIN(visible_at) FROM outbox WHERE sent_at IS NULL")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    /// Marks rows published.
    pub async fn outbox_mark_sent(&self, seqs: Vec<i64>, now: i64) -> Result<(), StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached("UPDATE outbox SET sent_at = ?2 WHERE seq = ?1")?;
            for seq in seqs {
                stmt.execute(params![seq, now])?;
            }
            Ok(())
        })
        .await
    }

    /// Outbox rows, newest first; `pending_only` hides sent ones.
    pub async fn outbox_list(
        &self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.call(move |conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM outbox WHERE (?1 = 0 OR sent_at IS NULL)
                 ORDER BY seq DESC LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            collect(stmt.query_map(params![pending_only as i64, limit as i64], row)?)
        })
        .await
    }

    /// Queues a row to be published again (Brighter's Repost). False if
    /// there is no such row. The broker drops it if it is still within the
    /// duplicate window of the first send.
    pub async fn outbox_repost(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            Ok(conn.execute(
                "UPDATE outbox SET sent_at = NULL WHERE id = ?1 OR CAST(seq AS TEXT) = ?1",
                params![id],
            )? > 0)
        })
        .await
    }
}
