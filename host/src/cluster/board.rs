//! Job status across hosts (JetStream): the status board.
//!
//! On JetStream a message is run by whichever host's pump pulls it, and
//! each host records jobs in its own SQLite. A client that posted through
//! host A may poll A about a job that host B ran, so every host writes the
//! status of each job whose record changed to the JetStream key-value
//! bucket `SLUICE_JOBS` (key: job id, value: the status JSON with the
//! result), and `GET /v1/jobs/{id}` falls back to it when the local store
//! has no such job.
//!
//! Why this holds under host failure: the bucket lives in JetStream
//! (replicated like the streams), not on a host; a host that dies mid-job
//! leaves a `running` status that the host taking over overwrites. A final
//! status is never replaced by an older non-final one (a late write from a
//! host that lost the job), checked with the entry's revision.
//!
//! The feed from the pumps is a set of job ids in memory
//! (`pump::Changes`): a job that changes twice before it is shared is
//! written once, a write that fails goes back into the set and is retried
//! (backing off while NATS is unreachable), and what waits is bounded by
//! the number of jobs that changed. A host killed between a commit and its
//! write leaves the previous status in the bucket until another host
//! records the job (or, for a job this host finished, until it restarts
//! and the job changes again).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::api::{JobView, is_final};
use crate::message::now_ms;
use crate::pump::Changes;
use crate::store::Store;
use crate::transport::JetStream;

/// The bucket.
pub const BUCKET: &str = "SLUICE_JOBS";

/// What the bucket holds per job.
#[derive(Debug, Serialize, Deserialize)]
struct Shared {
    #[serde(flatten)]
    view: JobView,
    result: Option<String>,
}

/// Reads and writes job statuses in [`BUCKET`].
#[derive(Clone)]
pub struct StatusBoard {
    kv: async_nats::jetstream::kv::Store,
}

impl StatusBoard {
    /// Opens the bucket, creating it if needed. Entries expire after
    /// `max_age` (the stream's), one revision kept per key.
    pub async fn open(
        js: &JetStream,
        replicas: usize,
        max_age: Duration,
    ) -> Result<StatusBoard, String> {
        let kv = super::bucket(
            js,
            BUCKET,
            "sluice job statuses, by job id",
            replicas,
            max_age,
        )
        .await?;
        Ok(StatusBoard { kv })
    }

    /// The status another host shared for job `id`, if any.
    pub async fn get(&self, id: &str) -> Option<JobView> {
        if !valid_key(id) {
            return None;
        }
        match self.kv.get(id).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Shared>(&bytes) {
                Ok(shared) => Some(JobView {
                    result: shared.result,
                    ..shared.view
                }),
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "unreadable status in {BUCKET}");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "cannot read {BUCKET}");
                None
            }
        }
    }

    /// Shares `view` unless the bucket holds a final status of the same
    /// life of the job (same replay count) or a newer one.
    pub(super) async fn put(&self, view: JobView) -> Result<(), String> {
        let key = view.id.clone();
        if !valid_key(&key) {
            return Ok(());
        }
        let entry = self
            .kv
            .entry(key.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let (state, updated_at, replays) = (view.state, view.updated_at, view.replays);
        let value = serde_json::to_vec(&Shared {
            result: view.result.clone(),
            view,
        })
        .map_err(|e| e.to_string())?;
        match entry {
            Some(e) => {
                // A final status ends that life of the job (only a replay,
                // which counts up `replays`, starts another): a host that
                // ran a stale redelivery afterwards, and so has a newer but
                // non-final record, must not hide it from everyone.
                if let Ok(old) = serde_json::from_slice::<Shared>(&e.value)
                    && is_final(old.view.state)
                    && !is_final(state)
                    && (old.view.replays >= replays || old.view.updated_at >= updated_at)
                {
                    return Ok(());
                }
                self.kv
                    .update(key.as_str(), Bytes::from(value), e.revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => self
                .kv
                .put(key.as_str(), Bytes::from(value))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    /// Shares the status of every job id added to `changes`, read from
    /// `store`, until `done`; then shares what is still waiting (the
    /// daemon bounds how long). A failed write is put back and retried
    /// after a pause that doubles up to 5 s.
    pub async fn run(self, store: Store, changes: Arc<Changes>, done: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        loop {
            let mut failed = Vec::new();
            for id in changes.take() {
                if !self.share(&store, &id).await {
                    failed.push(id);
                }
            }
            let ok = failed.is_empty();
            changes.put_back(failed);
            if done.is_cancelled() {
                if changes.is_empty() {
                    return;
                }
                if !ok {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                continue;
            }
            if ok {
                pause = Duration::from_millis(100);
                tokio::select! {
                    () = changes.added() => {}
                    () = done.cancelled() => {}
                }
            } else {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = done.cancelled() => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// Shares one job's status; false if it should be tried again.
    async fn share(&self, store: &Store, id: &str) -> bool {
        let job = match store.job(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "cannot read job to share its status");
                return false;
            }
        };
        match self.put(JobView::of(job, now_ms())).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "cannot share job status in {BUCKET}; will retry");
                false
            }
        }
    }
}

/// Job ids are hex and dashes; anything else is not a key we wrote.
pub(super) fn valid_key(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}
