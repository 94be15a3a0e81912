//! The outbox relay: publishes the rows a committed transaction wrote to
//! the store's outbox (posts, continuations), in `seq` order, each with its
//! deterministic `Nats-Msg-Id` so a re-send after a crash is dropped by the
//! stream's duplicate window; only then marks them sent.
//!
//! No row can hold up the rows behind it. Each pass publishes a batch
//! (pipelined) and sorts what went wrong:
//! - a row that can never go out as it is (a header or subject NATS cannot
//!   carry, headers and body over the server's `max_payload`, a size the
//!   stream refuses) is set aside as **poison** at once;
//! - a row the server refused for a reason of its own while later rows of
//!   the same pass went through is retried later with backoff, and poisoned
//!   after `store::OUTBOX_MAX_ATTEMPTS` refusals;
//! - a failure of the connection or of the whole stream (timeouts, no
//!   connection, no responders, every row refused alike) charges no row:
//!   the pass ends and the relay tries again shortly.
//!
//! A post row with a uniqueness key claims it first (`unique.rs`), as the
//! API's posts do: a row whose key another message holds is not published
//! and leaves the outbox `Refused`, the reason in its error.

use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{ErrorCode, context::PublishAckFuture};
use tokio_util::sync::CancellationToken;

use super::super::wire::{self, Envelope, WireError};
use super::schedule::ScheduleError;
use super::{JetStream, JetStreamError};
use crate::message::now_ms;
use crate::message::options::{self, Unique};
use crate::store::{OutboxRow, RelayOutcome};

/// Rows per pass.
const BATCH: usize = 256;

/// How long the relay sleeps when nothing is due (rows committed by
/// another process, e.g. `sluice outbox repost`, are found this late).
const POLL: Duration = Duration::from_millis(200);

/// How one row's publish failed.
#[derive(Debug)]
enum Failure {
    /// The message itself is the problem: set it aside.
    Poison(String),
    /// The server refused this row; the pass decides whether that is the
    /// row's fault (later rows went through) or the stream's.
    Refused(String),
    /// The connection or the stream failed: nobody's fault, retry the pass.
    Transient(String),
}

fn classify(e: &PublishError) -> Failure {
    let text = e.to_string();
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Failure::Poison(text),
        PublishErrorKind::Other => {
            let api = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            match api {
                Some(api) if api.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => {
                    Failure::Poison(api.to_string())
                }
                Some(api) => Failure::Refused(api.to_string()),
                None => Failure::Transient(text),
            }
        }
        _ => Failure::Transient(text),
    }
}

/// Delay before retrying a row refused `attempts` times: 1 s doubling,
/// capped at a minute.
fn row_backoff(attempts: u32) -> i64 {
    1000i64.saturating_mul(1 << attempts.min(6)).min(60_000)
}

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
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = shutdown.cancelled() => {}
                    }
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
            let wait = match store.outbox_next_due(self.schedule_horizon_ms()).await {
                Ok(Some(at)) => Duration::from_millis(
                    u64::try_from((at - now_ms()).clamp(0, POLL.as_millis() as i64)).unwrap_or(0),
                ),
                _ => POLL,
            };
            tokio::select! {
                _ = self.inner.relay_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Publishes what is due in the outbox now, for a process without a
    /// relay of its own (`sluice dlq replay`): passes until one settles
    /// nothing. A daemon's relay would send the same rows later.
    pub async fn flush_outbox(&self) -> Result<(), JetStreamError> {
        while self.relay_once().await? > 0 {}
        Ok(())
    }

    /// One pass of the relay; returns how many rows it settled (sent or set
    /// aside), so the caller loops while there is work.
    pub(super) async fn relay_once(&self) -> Result<usize, JetStreamError> {
        let store = &self.inner.store;
        let outbox_err = |e: crate::store::StoreError| JetStreamError::Publish {
            subject: "outbox".into(),
            reason: e.to_string(),
        };
        let now = now_ms();
        // With schedules, a delayed row leaves at once as a schedule the
        // server keeps (if it falls due within the stream's max_age), so it
        // no longer depends on this host being up when it is due.
        let rows = store
            .outbox_due(now, now.saturating_add(self.schedule_horizon_ms()), BATCH)
            .await
            .map_err(outbox_err)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut outcomes: Vec<(i64, RelayOutcome)> = Vec::with_capacity(rows.len());
        let mut refused: Vec<(&OutboxRow, String)> = Vec::new();
        let mut transient: Option<String> = None;
        let mut pending: Vec<(&OutboxRow, PublishAckFuture)> = Vec::with_capacity(rows.len());
        // Keys this pass claimed, by row: freed again if the row stores
        // nothing after all.
        let mut claimed: Vec<(&OutboxRow, Unique, Option<String>)> = Vec::new();
        for row in &rows {
            match self.claim_row_key(row).await {
                Ok(RowKey::Free) => {}
                Ok(RowKey::Claimed(unique, replaced)) => claimed.push((row, unique, replaced)),
                Ok(RowKey::Held(note)) => {
                    outcomes.push((row.seq, RelayOutcome::Refused { note }));
                    continue;
                }
                Err(e) => {
                    // The bucket is unreachable: so is the stream, likely.
                    transient = Some(e.to_string());
                    break;
                }
            }
            match self.send_row(row).await {
                Ok(ack) => pending.push((row, ack)),
                Err(Failure::Poison(e)) => outcomes.push(poison(row, e)),
                Err(Failure::Refused(e)) => refused.push((row, e)),
                Err(Failure::Transient(e)) => {
                    // The connection is the problem: later rows would fail
                    // alike; they stay for the next pass.
                    transient = Some(e);
                    break;
                }
            }
        }
        let mut stored_before = Vec::new();
        for (row, ack) in pending {
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        stored_before.push(row.seq);
                    }
                    outcomes.push((row.seq, RelayOutcome::Sent));
                }
                Err(e) => match classify(&e) {
                    Failure::Poison(e) => outcomes.push(poison(row, e)),
                    Failure::Refused(e) => refused.push((row, e)),
                    Failure::Transient(e) => {
                        transient.get_or_insert(e);
                    }
                },
            }
        }
        // A refusal is the row's own fault only if the stream took later
        // rows of this pass; else the stream itself is refusing (a full
        // disk, no quorum) and no row is charged for it.
        let took_later = |row: &OutboxRow| {
            outcomes
                .iter()
                .any(|(seq, o)| *o == RelayOutcome::Sent && *seq > row.seq)
        };
        let mut charged = Vec::new();
        for (row, error) in &refused {
            if took_later(row) {
                tracing::warn!(seq = row.seq, id = %row.id, attempts = row.attempts + 1, %error, "outbox relay: the stream refused this row; it will be retried later");
                charged.push((
                    row.seq,
                    RelayOutcome::Retry {
                        retry_at: now_ms().saturating_add(row_backoff(row.attempts)),
                        error: error.clone(),
                    },
                ));
            } else {
                transient.get_or_insert_with(|| error.clone());
            }
        }
        outcomes.extend(charged);
        // A key claimed for a row that stores nothing is freed: a poisoned
        // row, or one the stream had already (sent before a crash kept the
        // outbox from recording it; its job may be over).
        for (row, unique, replaced) in &claimed {
            let poisoned = outcomes
                .iter()
                .any(|(seq, o)| *seq == row.seq && matches!(o, RelayOutcome::Poison { .. }));
            if poisoned || stored_before.contains(&row.seq) {
                let (channel, id) = (&row.channel, &row.message.id);
                match replaced {
                    Some(holder) => self.restore_unique(channel, id, unique, holder).await,
                    None => self.release_unique(channel, id, unique).await,
                }
            }
        }
        let settled = outcomes.len();
        store
            .outbox_record(outcomes, now_ms())
            .await
            .map_err(outbox_err)?;
        match transient {
            Some(reason) if settled == 0 => Err(JetStreamError::Publish {
                subject: "outbox".into(),
                reason,
            }),
            _ => Ok(settled),
        }
    }

    /// Claims the uniqueness key of a post row (`unique`), as the API
    /// does for its posts. A row for one handler (a retry, the next slice,
    /// a replay) carries its job's headers, key included, but is the job
    /// holding the key, not a new post: it claims nothing.
    async fn claim_row_key(&self, row: &OutboxRow) -> Result<RowKey, JetStreamError> {
        if row.consumer.is_some() {
            return Ok(RowKey::Free);
        }
        let Some(unique) = options::unique(&row.message.headers) else {
            return Ok(RowKey::Free);
        };
        let id = &row.message.id;
        match self.claim_unique(&row.channel, id, &unique).await? {
            super::unique::Claim::Taken { replaced } => Ok(RowKey::Claimed(unique, replaced)),
            // Its own key: a row sent before whose outbox record was lost.
            super::unique::Claim::Own => Ok(RowKey::Free),
            super::unique::Claim::Held(holder) => {
                tracing::info!(channel = %row.channel, key = %unique.key, message_id = %id, %holder, "post refused: another message holds its unique key");
                Ok(RowKey::Held(format!(
                    "not published: message {holder} holds its unique key {:?}",
                    unique.key
                )))
            }
        }
    }

    /// Builds and sends one row; the returned future resolves to the
    /// stream's ack.
    async fn send_row(&self, row: &OutboxRow) -> Result<PublishAckFuture, Failure> {
        let subject = wire::target(&row.channel, row.consumer.as_deref(), &row.message.headers);
        let now = now_ms();
        let not_before = (row.visible_at > now).then_some(row.visible_at);
        let framed = wire::check_subject(&subject).and_then(|()| {
            let headers = wire::headers(&Envelope {
                message: &row.message,
                dedupe_id: &row.id,
                not_before,
                expires_at: row.expires_at,
            })?;
            wire::check_size(
                &headers,
                row.message.body.len(),
                self.inner.client.max_payload(),
            )?;
            Ok(headers)
        });
        let headers = framed.map_err(|e: WireError| Failure::Poison(e.to_string()))?;
        let body: bytes::Bytes = row.message.body.clone().into();
        // Not due yet (only with schedules: see `outbox_due` above): the
        // server keeps it, however soon it is due; a delivery NAKed until
        // then would hold a consumer slot.
        if row.visible_at > now && self.inner.schedules {
            return self
                .publish_schedule(&subject, headers, body, row.visible_at, &row.id)
                .await
                .map_err(|e| match e {
                    ScheduleError::Wire(w) => Failure::Poison(w.to_string()),
                    ScheduleError::Publish(p) => classify(&p),
                });
        }
        self.inner
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(|e| classify(&e))
    }
}

/// What a row's uniqueness key says.
enum RowKey {
    /// No key to claim: send it.
    Free,
    /// This pass claimed it (replacing this waiting holder, if any): send
    /// it.
    Claimed(Unique, Option<String>),
    /// Another message holds it: not sent, for this reason.
    Held(String),
}

fn poison(row: &OutboxRow, error: String) -> (i64, RelayOutcome) {
    tracing::error!(
        seq = row.seq, id = %row.id, channel = %row.channel, %error,
        "outbox relay: row can never be published as it is; set aside as poison (see `sluice outbox list --poisoned`; `sluice outbox repost` once fixed)"
    );
    (row.seq, RelayOutcome::Poison { error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_backoff_grows_and_caps() {
        assert_eq!(row_backoff(0), 1000);
        assert_eq!(row_backoff(1), 2000);
        assert_eq!(row_backoff(30), 60_000);
    }
}
