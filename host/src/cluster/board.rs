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
//! status is never replaced by a non-final one of the same life of the job
//! (a late write from a host that lost the job, or ran a stale
//! redelivery). Every write is conditional on the revision the writer read,
//! the first one too ("no entry yet"): two hosts writing one job at once
//! (one sharing `succeeded`, the other a `scheduled` it recorded just
//! before) cannot end with the non-final status on top; the loser reads
//! again and weighs what won.
//!
//! The feed from the pumps is a set of job ids in memory
//! (`pump::Changes`): a job that changes twice before it is shared is
//! written once, a write that fails goes back into the set and is retried
//! (backing off while NATS is unreachable), and what waits is bounded by
//! the number of jobs that changed. A host killed between a commit and its
//! write leaves the previous status in the bucket until another host
//! records the job (or, for a job this host finished, until it restarts
//! and the job changes again).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::{JobView, is_final};
use crate::message::now_ms;
use crate::pump::Changes;
use crate::store::Store;
use crate::transport::JetStream;

/// The bucket.
pub const BUCKET: &str = "SLUICE_JOBS";

/// Conditional writes refused in a row before a share is put back (and
/// retried after a pause): only hosts writing the same job at once race.
const RACE_TRIES: usize = 8;

/// What the bucket held for a job when this host read it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The entry's revision; 0 when the key has none.
    revision: u64,
    /// The status it held, if any.
    held: Option<JobView>,
}

/// Why [`StatusBoard::put_over`] wrote nothing.
#[derive(Debug)]
pub enum Refused {
    /// The entry changed since it was read.
    Raced,
    /// The write failed (NATS unreachable, ...).
    Failed(String),
}

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
    /// life of the job (same replay count) or a newer one. A write is
    /// conditional on the entry this host read (its revision; none: the key
    /// must still be absent), so another host's status written in between
    /// is read again and weighed, never blindly overwritten.
    pub async fn put(&self, view: JobView) -> Result<(), String> {
        let mut tries = 0;
        loop {
            let seen = self.seen(&view.id).await?;
            match self.put_over(&seen, view.clone()).await {
                Err(Refused::Raced) if tries < RACE_TRIES => tries += 1,
                Err(Refused::Raced) => {
                    return Err(format!(
                        "{BUCKET} entry changed under {RACE_TRIES} writes in a row"
                    ));
                }
                Err(Refused::Failed(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// What the bucket holds for job `id` now, for [`StatusBoard::put_over`].
    pub async fn seen(&self, id: &str) -> Result<Seen, String> {
        if !valid_key(id) {
            return Ok(Seen::default());
        }
        let entry = self.kv.entry(id).await.map_err(|e| e.to_string())?;
        Ok(entry.map_or_else(Seen::default, |e| Seen {
            revision: e.revision,
            // A deleted or purged key has an empty value: nothing held.
            held: serde_json::from_slice::<Shared>(&e.value)
                .ok()
                .map(|s| s.view),
        }))
    }

    /// Shares `view` over `seen` (what this host read before): skipped if
    /// `seen` is a final status `view` must not hide, refused with
    /// [`Refused::Raced`] if the entry is no longer `seen` (another host
    /// wrote in between: read it again).
    pub async fn put_over(&self, seen: &Seen, view: JobView) -> Result<(), Refused> {
        let key = view.id.clone();
        if !valid_key(&key) {
            return Ok(());
        }
        // A final status ends that life of the job (only a replay, which
        // counts up `replays`, starts another): a host that ran a stale
        // redelivery afterwards, and so has a newer but non-final record,
        // must not hide it from everyone.
        if let Some(old) = &seen.held
            && is_final(old.state)
            && !is_final(view.state)
            && (old.replays >= view.replays || old.updated_at >= view.updated_at)
        {
            return Ok(());
        }
        let value = serde_json::to_vec(&Shared {
            result: view.result.clone(),
            view,
        })
        .map_err(|e| Refused::Failed(e.to_string()))?;
        // Revision 0: the key must have no entry (the server checks the
        // subject's last sequence), exactly as `create` does.
        match self
            .kv
            .update(key.as_str(), Bytes::from(value), seen.revision)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if crate::transport::cas::lost_race(&e) => Err(Refused::Raced),
            Err(e) => Err(Refused::Failed(e.to_string())),
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
