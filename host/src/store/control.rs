//! The store operations behind the HTTP API's job control and health:
//! cancelling a job that has not started, the outbox lag and a write probe.
//! (Paging through jobs is in `listing`.)
//!
//! They live apart from `jobs.rs` because they serve operators, not the
//! message path; like everything else they run on the writer thread.

use rusqlite::{OptionalExtension, params};

use super::jobs::{RECORD_COLUMNS, record};
use super::records::{JobRecord, JobState};
use super::{Store, StoreError};
use crate::message::now_ms;

/// What [`Store::cancel`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// It was waiting (queued, scheduled, retrying) and is now cancelled.
    Cancelled(Box<JobRecord>),
    /// A worker has it: only that worker can interrupt it.
    Running,
    /// It had already ended in this state.
    Finished(JobState),
    /// No such job.
    NotFound,
}

/// Outbox rows committed but not yet published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxLag {
    /// How many wait to be published.
    pub pending: u64,
    /// Unix ms when the oldest of them was committed.
    pub oldest_ms: Option<i64>,
    /// How many were set aside as poison (never publishable as they are).
    pub poisoned: u64,
}

impl Store {
    /// Cancels job `id` if it has not started: it becomes `cancelled` at
    /// once and no worker will claim it. Running and finished jobs are left
    /// alone (see [`Cancel`]).
    pub async fn cancel(&self, id: &str) -> Result<Cancel, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let now = now_ms();
            let changed = conn
                .prepare_cached(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2,
                         last_error = 'cancelled by an operator'
                     WHERE id = ?1 AND state IN ('queued', 'scheduled', 'retrying')",
                )?
                .execute(params![id, now])?;
            let sql = format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1");
            let row = conn
                .prepare_cached(&sql)?
                .query_row(params![id], record)
                .optional()?
                .transpose()?;
            Ok(match row {
                None => Cancel::NotFound,
                Some(job) if changed > 0 => Cancel::Cancelled(Box::new(job)),
                Some(job) if job.state == JobState::Running => Cancel::Running,
                Some(job) => Cancel::Finished(job.state),
            })
        })
        .await
    }

    /// How far the outbox relay is behind (on the reader connection).
    pub async fn outbox_lag(&self) -> Result<OutboxLag, StoreError> {
        self.read(|conn| {
            let (pending, oldest): (i64, Option<i64>) = conn
                .prepare_cached(
                    "SELECT COUNT(*), MIN(created_at) FROM outbox
                     WHERE sent_at IS NULL AND failed_at IS NULL",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let poisoned: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NOT NULL",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(OutboxLag {
                pending: u64::try_from(pending).unwrap_or(0),
                oldest_ms: oldest,
                poisoned: u64::try_from(poisoned).unwrap_or(0),
            })
        })
        .await
    }

    /// Commits a one-row write: succeeds only if the writer thread is alive
    /// and the database accepts writes (disk, locks).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.call(|conn| {
            conn.prepare_cached(
                "INSERT INTO health (id, checked_at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
            )?
            .execute(params![now_ms()])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageKind};
    use crate::store::{CallRecord, Finish, JobFilter, NewMessage, StoreOptions};

    fn msg(id: &str) -> NewMessage {
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

    #[tokio::test]
    async fn cancel_takes_waiting_jobs_only() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Sql(e.to_string()))?;
        let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default())?;
        store
            .register_consumers(vec![("c".into(), "h".into())])
            .await?;
        let published = store.publish(vec![msg("a"), msg("b")]).await?;
        let (a, b) = (
            published[0].job_ids[0].clone(),
            published[1].job_ids[0].clone(),
        );
        assert!(
            matches!(store.cancel(&a).await?, Cancel::Cancelled(j) if j.state == JobState::Cancelled)
        );
        assert_eq!(
            store.cancel(&a).await?,
            Cancel::Finished(JobState::Cancelled)
        );
        assert_eq!(store.cancel("nope").await?, Cancel::NotFound);
        // The cancelled job is never claimed; the other one is, and then
        // only its worker can end it.
        let claimed = store.claim("c", "h", 10).await?;
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job_id, b);
        assert_eq!(store.cancel(&b).await?, Cancel::Running);
        let reason = "cancelled by an operator while running".to_owned();
        store
            .finish(&b, 1, CallRecord::default(), Finish::Cancelled { reason })
            .await?;
        assert_eq!(
            store
                .job(&b)
                .await?
                .map(|j| (j.state, j.finished_at.is_some())),
            Some((JobState::Cancelled, true))
        );
        Ok(())
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_and_the_probe_writes() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Sql(e.to_string()))?;
        let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default())?;
        store
            .publish((0..5).map(|i| msg(&format!("m{i}"))).collect())
            .await?;
        let filter = JobFilter {
            limit: 2,
            ..JobFilter::default()
        };
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store.jobs_page(filter.clone(), before.clone()).await?;
            if page.is_empty() {
                break;
            }
            before = page.last().map(|j| (j.created_at, j.id.clone()));
            seen.extend(page.into_iter().map(|j| j.id));
        }
        let all: Vec<String> = store
            .jobs(JobFilter::default())
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(seen, all, "every job once, newest first");
        store.probe_write().await?;
        assert_eq!(store.outbox_lag().await?, OutboxLag::default());
        Ok(())
    }
}
