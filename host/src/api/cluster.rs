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
//! Limits: the feed from the pumps is an in-memory queue of job ids, so a
//! host killed between a commit and its write leaves the previous status in
//! the bucket until another host records the job; while NATS is down the
//! queue grows (ids only) and is written out on reconnect.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::jobs::{JobView, is_final};
use crate::message::now_ms;
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
        let context = async_nats::jetstream::new(js.client().clone());
        let kv = match context.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => context
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "sluice job statuses, by job id".to_owned(),
                    history: 1,
                    max_age,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create key-value bucket {BUCKET}: {e}"))?,
        };
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

    /// Shares `view` unless the bucket holds a final status newer than it.
    async fn put(&self, view: JobView) -> Result<(), String> {
        let key = view.id.clone();
        if !valid_key(&key) {
            return Ok(());
        }
        let entry = self
            .kv
            .entry(key.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let (state, updated_at) = (view.state, view.updated_at);
        let value = serde_json::to_vec(&Shared {
            result: view.result.clone(),
            view,
        })
        .map_err(|e| e.to_string())?;
        match entry {
            Some(e) => {
                if let Ok(old) = serde_json::from_slice::<Shared>(&e.value)
                    && is_final(old.view.state)
                    && !is_final(state)
                    && old.view.updated_at >= updated_at
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

    /// Shares the status of every job id that arrives on `changes`, read
    /// from `store`, until `done`; then shares what is still waiting.
    pub async fn run(
        self,
        store: Store,
        mut changes: UnboundedReceiver<String>,
        done: CancellationToken,
    ) {
        loop {
            let id = tokio::select! {
                id = changes.recv() => match id {
                    Some(id) => id,
                    None => return,
                },
                _ = done.cancelled() => break,
            };
            self.share(&store, &id).await;
        }
        while let Ok(id) = changes.try_recv() {
            self.share(&store, &id).await;
        }
    }

    async fn share(&self, store: &Store, id: &str) {
        let job = match store.job(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "cannot read job to share its status");
                return;
            }
        };
        if let Err(e) = self.put(JobView::of(job, now_ms())).await {
            tracing::warn!(job_id = %id, error = %e, "cannot share job status in {BUCKET}");
        }
    }
}

/// Job ids are hex and dashes; anything else is not a key we wrote.
fn valid_key(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}
