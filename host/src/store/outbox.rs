//! The outbox: messages a committed transaction wants published on an
//! external transport (JetStream). Rows are written in the same transaction
//! as the job that produced them and published by the relay only after that
//! commit, in `seq` order, each with a deterministic dedupe id so a re-send
//! is dropped by the broker's duplicate window.
//!
//! A row the broker can never take (too large, a header or subject it
//! cannot carry) is a **poison row**: the relay sets it aside (`failed_at`,
//! `error`) and the rows behind it go on; `sluice outbox list`, the API and
//! `/metrics` show it, and `repost` queues it again once the cause is fixed.
//! A row refused for a reason that may pass is retried later (`retry_at`)
//! without holding up the others, and poisoned after [`MAX_ATTEMPTS`].

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Store, StoreError};
use crate::message::{Message, MessageKind};
use crate::store::NewMessage;

/// Refusals of one row (each retried later) before it is set aside.
pub const MAX_ATTEMPTS: u32 = 10;

/// One outbox row.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    /// Publish order.
    pub seq: i64,
    /// The broker's dedupe id.
    pub id: String,
    /// `None`: a post to the channel; `Some(handler)`: a message for that
    /// handler only (a continuation, a retry).
    pub consumer: Option<String>,
    /// The message.
    #[serde(skip)]
    pub message: Message,
    /// The channel (also in `message`), for listings.
    pub channel: String,
    /// Set on continuations: where the next slice starts.
    pub cursor: Option<String>,
    /// Unix ms from which it may run.
    pub visible_at: i64,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
    /// Unix ms when it was published; `None` while pending.
    pub sent_at: Option<i64>,
    /// Times the broker refused it.
    pub attempts: u32,
    /// Unix ms when it was set aside as poison.
    pub failed_at: Option<i64>,
    /// Why the broker last refused it.
    pub error: Option<String>,
}

impl OutboxRow {
    /// pending, sent or poisoned.
    pub fn status(&self) -> &'static str {
        if self.sent_at.is_some() {
            "sent"
        } else if self.failed_at.is_some() {
            "poisoned"
        } else {
            "pending"
        }
    }
}

/// Which rows [`Store::outbox_list`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboxFilter {
    /// Every row.
    #[default]
    All,
    /// Not yet published (and not set aside).
    Pending,
    /// Set aside as poison.
    Poisoned,
    /// Published.
    Sent,
}

/// How the relay's attempt at one row ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Published.
    Sent,
    /// Refused for a reason that may pass: try again at `retry_at`
    /// (poisoned instead once it was refused [`MAX_ATTEMPTS`] times).
    Retry {
        /// Unix ms.
        retry_at: i64,
        /// Why.
        error: String,
    },
    /// Can never be published as it is: set it aside.
    Poison {
        /// Why.
        error: String,
    },
    /// Not published, and never will be: another message holds its
    /// uniqueness key (JetStream). It leaves the outbox like a sent row,
    /// with why in its `error`.
    Refused {
        /// Why.
        note: String,
    },
}

/// Writes a post (or, with `consumer`, a message for one handler) to the
/// outbox, as posted by `job_id`. Idempotent on `id`.
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
                       visible_at, expires_at, sent_at, attempts, failed_at, error";

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
        attempts: r.get(12)?,
        failed_at: r.get(13)?,
        error: r.get(14)?,
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
    /// Unsent rows that may be published now: visible by `until` (the
    /// relay looks ahead when the broker holds delayed messages itself) and
    /// not waiting for a retry after `now`; oldest first, at most `limit`.
    pub async fn outbox_due(
        &self,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.call(move |conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM outbox
                 WHERE sent_at IS NULL AND failed_at IS NULL AND visible_at <= ?1
                   AND (retry_at IS NULL OR retry_at <= ?2)
                 ORDER BY seq LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            collect(stmt.query_map(params![until, now, limit as i64], row)?)
        })
        .await
    }

    /// When the next unsent row falls due (Unix ms), looking `lookahead` ms
    /// ahead like [`Store::outbox_due`], if any row is waiting.
    pub async fn outbox_next_due(&self, lookahead: i64) -> Result<Option<i64>, StoreError> {
        self.call(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT MIN(MAX(visible_at - ?1, COALESCE(retry_at, 0))) FROM outbox
                     WHERE sent_at IS NULL AND failed_at IS NULL",
                )?
                .query_row(params![lookahead], |r| r.get(0))?)
        })
        .await
    }

    /// Records how the relay's attempts at rows ended, in one operation.
    pub async fn outbox_record(
        &self,
        outcomes: Vec<(i64, RelayOutcome)>,
        now: i64,
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.call(move |conn| {
            let mut sent = conn.prepare_cached(
                "UPDATE outbox SET sent_at = ?2, retry_at = NULL, error = NULL WHERE seq = ?1",
            )?;
            let mut retry = conn.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, error = ?3,
                     retry_at = CASE WHEN attempts + 1 >= ?4 THEN NULL ELSE ?2 END,
                     failed_at = CASE WHEN attempts + 1 >= ?4 THEN ?5 ELSE NULL END
                 WHERE seq = ?1",
            )?;
            let mut refused = conn.prepare_cached(
                "UPDATE outbox SET sent_at = ?2, retry_at = NULL, error = ?3 WHERE seq = ?1",
            )?;
            let mut poison = conn.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, error = ?2, failed_at = ?3,
                     retry_at = NULL
                 WHERE seq = ?1",
            )?;
            for (seq, outcome) in outcomes {
                match outcome {
                    RelayOutcome::Sent => sent.execute(params![seq, now])?,
                    RelayOutcome::Retry { retry_at, error } => {
                        retry.execute(params![seq, retry_at, error, MAX_ATTEMPTS, now])?
                    }
                    RelayOutcome::Poison { error } => poison.execute(params![seq, error, now])?,
                    RelayOutcome::Refused { note } => refused.execute(params![seq, now, note])?,
                };
            }
            Ok(())
        })
        .await
    }

    /// Marks rows published.
    pub async fn outbox_mark_sent(&self, seqs: Vec<i64>, now: i64) -> Result<(), StoreError> {
        self.outbox_record(
            seqs.into_iter().map(|s| (s, RelayOutcome::Sent)).collect(),
            now,
        )
        .await
    }

    /// Outbox rows, newest first. Still on the writer: a read there waits
    /// for the relay's transaction in flight, which tests/it/wire.rs relies
    /// on (it lists poisoned rows right after the rows behind them were
    /// published); the reader would show the last committed snapshot.
    pub async fn outbox_list(
        &self,
        filter: OutboxFilter,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.call(move |conn| {
            let clause = match filter {
                OutboxFilter::All => "1",
                OutboxFilter::Pending => "sent_at IS NULL AND failed_at IS NULL",
                OutboxFilter::Poisoned => "sent_at IS NULL AND failed_at IS NOT NULL",
                OutboxFilter::Sent => "sent_at IS NOT NULL",
            };
            let sql =
                format!("SELECT {COLUMNS} FROM outbox WHERE {clause} ORDER BY seq DESC LIMIT ?1");
            let mut stmt = conn.prepare_cached(&sql)?;
            collect(stmt.query_map(params![limit as i64], row)?)
        })
        .await
    }

    /// Queues a row to be published again (Brighter's Repost), a poisoned
    /// one included. False if there is no such row. The broker drops it if it
    /// is still within the duplicate window of the first send.
    pub async fn outbox_repost(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            Ok(conn.execute(
                "UPDATE outbox SET sent_at = NULL, failed_at = NULL, retry_at = NULL,
                     attempts = 0, error = NULL
                 WHERE id = ?1 OR CAST(seq AS TEXT) = ?1",
                params![id],
            )? > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn post(id: &str) -> NewMessage {
        NewMessage {
            message: Message {
                id: id.into(),
                channel: "c".into(),
                kind: MessageKind::Command,
                headers: vec![],
                body: b"{}".to_vec(),
            },
            visible_at: 0,
            expires_at: None,
        }
    }

    async fn store_with(ids: &[&str]) -> Result<(tempfile::TempDir, Store), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Sql(e.to_string()))?;
        let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default())?;
        let posts: Vec<NewMessage> = ids.iter().map(|id| post(id)).collect();
        store
            .call(move |conn| {
                for p in &posts {
                    insert(conn, &p.message.id, None, p, None, None, 0)?;
                }
                Ok(())
            })
            .await?;
        Ok((dir, store))
    }

    #[tokio::test]
    async fn a_poison_row_is_set_aside_and_the_rows_behind_it_go_on() -> Result<(), StoreError> {
        let (_dir, store) = store_with(&["a", "b", "c"]).await?;
        let due = store.outbox_due(10, 10, 100).await?;
        let seq = |i: usize| due[i].seq;
        store
            .outbox_record(
                vec![
                    (
                        seq(0),
                        RelayOutcome::Poison {
                            error: "too large".into(),
                        },
                    ),
                    (
                        seq(1),
                        RelayOutcome::Retry {
                            retry_at: 50,
                            error: "refused".into(),
                        },
                    ),
                    (seq(2), RelayOutcome::Sent),
                ],
                10,
            )
            .await?;
        assert!(store.outbox_due(20, 20, 100).await?.is_empty(), "b waits");
        let later = store.outbox_due(50, 50, 100).await?;
        assert_eq!(later.len(), 1);
        assert_eq!((later[0].id.as_str(), later[0].attempts), ("b", 1));
        assert_eq!(store.outbox_next_due(0).await?, Some(50));
        let poisoned = store.outbox_list(OutboxFilter::Poisoned, 10).await?;
        assert_eq!(poisoned.len(), 1);
        assert_eq!(
            (poisoned[0].status(), poisoned[0].error.as_deref()),
            ("poisoned", Some("too large"))
        );
        assert_eq!(store.outbox_lag().await?.poisoned, 1);
        assert!(store.outbox_repost("a").await?);
        assert_eq!(store.outbox_due(60, 60, 100).await?.len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_row_refused_too_often_is_poisoned() -> Result<(), StoreError> {
        let (_dir, store) = store_with(&["a"]).await?;
        for round in 0..MAX_ATTEMPTS {
            let due = store.outbox_due(i64::from(round), i64::MAX, 10).await?;
            assert_eq!(due.len(), 1, "round {round}");
            let outcome = RelayOutcome::Retry {
                retry_at: i64::from(round),
                error: "refused".into(),
            };
            store.outbox_record(vec![(due[0].seq, outcome)], 0).await?;
        }
        assert!(store.outbox_due(1000, i64::MAX, 10).await?.is_empty());
        assert_eq!(
            store.outbox_list(OutboxFilter::Poisoned, 10).await?.len(),
            1
        );
        Ok(())
    }
}
