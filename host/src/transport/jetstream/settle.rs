//! Ending a delivery once the store recorded its outcome: ack, NAK with a
//! delay, or dead letter (a copy to `SLUICE_DLQ`, then term so JetStream
//! never redelivers it).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

use super::super::wire;
use super::super::{Delivery, Receipt, Settle};
use super::{JetStream, JetStreamError};

/// Bytes of a dead letter's reason kept in its `Sluice-Error` header (the
/// whole reason is in the store's job record).
const REASON_BYTES: usize = 2048;

impl JetStream {
    /// Settles `delivery` as `settle` says.
    pub(super) async fn settle_delivery(
        &self,
        delivery: &Delivery,
        settle: Settle,
    ) -> Result<(), JetStreamError> {
        // Whatever was committed may have put rows in the outbox.
        self.inner.relay_wake.notify_one();
        let Receipt::JetStream(msg) = &delivery.receipt else {
            return Ok(());
        };
        let ack = |kind| async move {
            msg.ack_with(kind)
                .await
                .map_err(|e| JetStreamError::Publish {
                    subject: "ack".into(),
                    reason: e.to_string(),
                })
        };
        let ended = matches!(settle, Settle::Ack | Settle::DeadLetter { .. });
        match settle {
            // A retry and the next slice travel as messages of their own
            // (through the outbox, committed with the outcome).
            Settle::Ack | Settle::Retry { .. } | Settle::Continue { .. } => {
                ack(AckKind::Ack).await?
            }
            Settle::Nak { delay } => ack(AckKind::Nak(Some(delay))).await?,
            Settle::DeadLetter { reason } => {
                let job = &delivery.job;
                let copied = self
                    .dead_letter(
                        msg,
                        &job.message.channel,
                        &job.message.id,
                        &job.consumer,
                        &reason,
                    )
                    .await;
                if let Err(e) = copied {
                    self.copy_again_soon(msg).await;
                    return Err(e);
                }
                ack(AckKind::Term).await?;
            }
        }
        // The job ended: its uniqueness key is free again. Else it goes
        // on later (a retry, the next slice, a hand-back): waiting, so a
        // replace may take it.
        if let Some(unique) = crate::message::options::unique(&delivery.job.message.headers) {
            let m = &delivery.job.message;
            if ended {
                self.release_unique(&m.channel, &m.id, &unique).await;
            } else {
                self.unmark_unique(&m.channel, &m.id, &unique).await;
            }
        }
        Ok(())
    }

    /// Copies the delivery `msg` of message `id` for `consumer` to the dead
    /// letters of `channel`. Named by the delivery's stored message, so a
    /// re-send (after a crash, or when the message comes back because the
    /// first copy failed) is dropped as a duplicate, but the dead letter of
    /// a replay (a message of its own) is not.
    pub(super) async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        channel: &str,
        id: &str,
        consumer: &str,
        reason: &str,
    ) -> Result<(), JetStreamError> {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let dedupe = format!("{id}/{consumer}/dead/{seq}");
        let subject = wire::dlq_subject(channel);
        self.dead_letter_copy(msg, &subject, reason, &dedupe).await
    }

    /// Asks for the delivery `msg` of a dead job, whose dead letter could
    /// not be copied, to come back soon (a NAK: 1 s, doubling with each
    /// delivery, at most the ack wait), when the inbox has it copied
    /// again. Left to the ack wait alone, a copy that failed right after a
    /// server restart was tried again only an ack wait later, and failing
    /// then too, another one later. A NAK that is lost leaves that.
    pub(super) async fn copy_again_soon(&self, msg: &jetstream::Message) {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        let delay = copy_delay(delivered, self.inner.settings.ack_wait);
        if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::debug!(error = %e, "cannot ask for the dead letter's message back; it comes back after the ack wait");
        }
    }

    /// Ends a message that cannot even be decoded: kept as a dead letter,
    /// never redelivered. If the copy cannot be made now, the message is
    /// left alone and comes back after the ack wait: nothing is lost.
    pub(super) async fn reject_undecodable(&self, msg: &jetstream::Message, reason: &str) {
        tracing::error!(subject = %msg.subject, %reason, "undecodable message dead-lettered");
        let stream_seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let dedupe = format!("undecodable/{}/{stream_seq}", msg.subject);
        let subject =
            wire::dlq_subject(wire::channel_of(msg.subject.as_str()).unwrap_or("undecodable"));
        match self.dead_letter_copy(msg, &subject, reason, &dedupe).await {
            Ok(()) => {
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot copy the undecodable message to the dead letters yet; it will come back");
            }
        }
    }

    /// Copies a delivery to the dead-letter subject with why, and waits for
    /// the stream to have it. A reason too long for the server's
    /// `max_payload` is cut; if even that does not fit, the copy goes
    /// without the delivery's own headers.
    async fn dead_letter_copy(
        &self,
        msg: &jetstream::Message,
        subject: &str,
        reason: &str,
        dedupe: &str,
    ) -> Result<(), JetStreamError> {
        let max = self.inner.client.max_payload();
        let attempts = [
            (msg.headers.as_ref(), REASON_BYTES),
            (msg.headers.as_ref(), 64),
            (None, 64),
        ];
        let mut headers = None;
        let mut refusal = None;
        for (original, cut) in attempts {
            match wire::dead_letter_headers(original, reason, cut, dedupe)
                .and_then(|h| wire::check_size(&h, msg.payload.len(), max).map(|()| h))
            {
                Ok(h) => {
                    headers = Some(h);
                    break;
                }
                Err(e) => refusal = Some(e),
            }
        }
        let Some(headers) = headers else {
            return Err(JetStreamError::Rejected {
                subject: subject.to_owned(),
                reason: refusal.unwrap_or(wire::WireError::TooLarge {
                    size: msg.payload.len(),
                    max,
                }),
            });
        };
        let err = |e: String| JetStreamError::Publish {
            subject: subject.to_owned(),
            reason: e,
        };
        self.inner
            .js
            .publish_with_headers(subject.to_owned(), headers, msg.payload.clone())
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

/// How long the `delivered`th delivery of a dead job whose copy failed
/// waits before it comes back: 1 s doubling, at most `ack_wait`.
fn copy_delay(delivered: i64, ack_wait: Duration) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(1u64 << doublings).min(ack_wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_copy_comes_back_soon_then_less_often() {
        let wait = Duration::from_secs(30);
        assert_eq!(copy_delay(1, wait), Duration::from_secs(1));
        assert_eq!(copy_delay(2, wait), Duration::from_secs(2));
        assert_eq!(copy_delay(5, wait), Duration::from_secs(16));
        assert_eq!(copy_delay(6, wait), wait);
        assert_eq!(copy_delay(i64::MAX, wait), wait);
        assert_eq!(copy_delay(0, wait), Duration::from_secs(1));
    }
}
