//! Cancels that reach every host: an operator's cancel is a key in the KV
//! bucket `SLUICE_CANCELS` (the job id, with the message, channel and
//! handler it belongs to), which every host watches.
//!
//! On each cancel a host interrupts the job if it runs it (recorded
//! `cancelled`, acked), cancels its waiting record, and records the job as
//! cancelled even when it has never seen it, so a delivery that reaches
//! it later is acked without running. A cancel of a job no host has
//! recorded yet (the API knows only its id) carries an empty message,
//! channel and handler; the record it makes learns them from the delivery
//! (`store::inbox`). A watch starts with the last value
//! of every key, so a host that was down or disconnected catches up on
//! what it missed. What is not covered: a delivery that starts on a host
//! before the cancel reaches it runs to its end if it is not running
//! there any more when the cancel arrives (a cancel is a request, not a
//! guarantee, for a job that is already running).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::board::valid_key;
use crate::pump::Control;
use crate::store::{RemoteCancel, Store};
use crate::transport::JetStream;

/// The bucket.
pub const CANCELS: &str = "SLUICE_CANCELS";

/// One cancel, as the bucket holds it (the key is the job id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelNote {
    /// The job's message.
    pub message_id: String,
    /// Its channel.
    pub channel: String,
    /// Its handler.
    pub handler: String,
    /// Why, when not an operator's cancel (a replace post of the job's
    /// uniqueness key); absent in older hosts' notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The cancels bucket.
#[derive(Clone)]
pub struct Cancels {
    kv: async_nats::jetstream::kv::Store,
}

impl Cancels {
    pub(super) async fn open(
        js: &JetStream,
        replicas: usize,
        max_age: Duration,
    ) -> Result<Cancels, String> {
        let kv = super::bucket(
            js,
            CANCELS,
            "sluice job cancels, by job id",
            replicas,
            max_age,
        )
        .await?;
        Ok(Cancels { kv })
    }

    /// Tells every host that job `id` is cancelled.
    pub async fn send(&self, id: &str, note: &CancelNote) -> Result<(), String> {
        if !valid_key(id) {
            return Err(format!("{id:?} is not a job id"));
        }
        let value = serde_json::to_vec(note).map_err(|e| e.to_string())?;
        self.kv
            .put(id, Bytes::from(value))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write the cancel to {CANCELS}: {e}"))
    }

    /// Applies every cancel already in the bucket to this host, once, and
    /// says how many there were. The daemon runs this before its pumps
    /// start: a host that was down while a job was cancelled elsewhere
    /// would otherwise take the job's next delivery (a retry that fired
    /// meanwhile) before its watch caught up, and run it.
    pub async fn catch_up(&self, store: &Store, control: &Control) -> Result<usize, String> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| format!("cannot list {CANCELS}: {e}"))?
            .filter_map(|k| async move { k.ok() })
            .collect()
            .await;
        let mut applied = 0;
        for key in keys {
            match self.kv.get(&key).await {
                Ok(Some(value)) => {
                    apply(store, control, &key, &value).await;
                    applied += 1;
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot read {CANCELS} {key:?}: {e}")),
            }
        }
        Ok(applied)
    }

    /// Applies every cancel (those in the bucket, then each new one) to
    /// this host until `stop`. A lost watch is opened again after a pause.
    pub async fn watch(self, store: Store, control: Arc<Control>, stop: CancellationToken) {
        let mut pause = Duration::from_millis(200);
        while !stop.is_cancelled() {
            match self.kv.watch_with_history(">").await {
                Ok(mut watch) => loop {
                    let entry = tokio::select! {
                        e = watch.next() => e,
                        () = stop.cancelled() => return,
                    };
                    match entry {
                        Some(Ok(entry)) => {
                            pause = Duration::from_millis(200);
                            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                                continue;
                            }
                            apply(&store, &control, &entry.key, &entry.value).await;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "watching {CANCELS} failed; watching again");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch {CANCELS}; trying again"),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

async fn apply(store: &Store, control: &Control, id: &str, value: &[u8]) {
    let note: CancelNote = match serde_json::from_slice(value) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(job_id = %id, error = %e, "unreadable cancel in {CANCELS}; ignored");
            return;
        }
    };
    match store
        .cancel_from_elsewhere(
            id,
            &note.message_id,
            &note.channel,
            &note.handler,
            note.reason.as_deref(),
        )
        .await
    {
        Ok(RemoteCancel::Running) => {
            if control.interrupt(id) {
                tracing::info!(job_id = %id, "running job interrupted: cancelled on another host");
            }
        }
        Ok(RemoteCancel::Cancelled) => control.changed(id),
        Ok(RemoteCancel::Finished) => {}
        Err(e) => {
            tracing::warn!(job_id = %id, error = %e, "cannot record a cancel from another host")
        }
    }
}
