//! The outbox relay: publishes the rows a committed transaction wrote to
//! the store's outbox (posts, continuations), in `seq` order, each with its
//! deterministic `Nats-Msg-Id` so a re-send after a crash is dropped by the
//! stream's duplicate window; only then marks them sent.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::super::wire::{self, Envelope};
use super::{JetStream, JetStreamError};
use crate::message::now_ms;

impl JetStream {
    /// Publishes committed outbox rows, in order, until `shutdown`; then
    /// flushes what is due and returns.
    pub async fn relay(&self, shutdown: CancellationToken) {
        let store = &self.inner.store;
        loop {
            let sent = match self.relay_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: publishing failed; will retry");
                    0
                }
            };
            if sent > 0 {
                continue;
            }
            if shutdown.is_cancelled() {
                return;
            }
            // Sleep until woken by a commit, the next delayed row is due, or
            // a poll interval passes (rows written by another process).
            let wait = match store.outbox_next_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 200) as u64),
                _ => Duration::from_millis(200),
            };
            tokio::select! {
                _ = self.inner.relay_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// One pass of the relay; returns how many rows it published.
    async fn relay_once(&self) -> Result<usize, JetStreamError> {
        let store = &self.inner.store;
        let rows = store
            .outbox_due(now_ms(), 256)
            .await
            .map_err(|e| JetStreamError::Publish {
                subject: "outbox".into(),
                reason: e.to_string(),
            })?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            let subject = match &row.consumer {
                Some(c) => wire::continuation_subject(c, &row.channel),
                None => wire::subject(&row.channel),
            };
            let headers = wire::headers(&Envelope {
                message: &row.message,
                dedupe_id: &row.id,
                not_before: None,
                expires_at: row.expires_at,
            });
            let ack = self
                .inner
                .js
                .publish_with_headers(subject.clone(), headers, row.message.body.clone().into())
                .await
                .map_err(|e| JetStreamError::Publish {
                    subject: subject.clone(),
                    reason: e.to_string(),
                })?;
            pending.push((row.seq, subject, ack));
        }
        let mut sent = Vec::with_capacity(pending.len());
        let mut failure = None;
        for (seq, subject, ack) in pending {
            match ack.await {
                Ok(_) => sent.push(seq),
                Err(e) => {
                    failure = Some(JetStreamError::Publish {
                        subject,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        let n = sent.len();
        store
            .outbox_mark_sent(sent, now_ms())
            .await
            .map_err(|e| JetStreamError::Publish {
                subject: "outbox".into(),
                reason: e.to_string(),
            })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }
}
