//! Ending a delivery once the store recorded its outcome: ack, NAK with a
//! delay, or dead letter (a copy to `SLUICE_DLQ`, then term so JetStream
//! never redelivers it).

use async_nats::jetstream::{self, AckKind};

use super::super::wire;
use super::super::{Delivery, Receipt, Settle};
use super::{JetStream, JetStreamError};

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
        match settle {
            Settle::Ack | Settle::Continue { .. } => ack(AckKind::Ack).await?,
            Settle::Nak { delay } => ack(AckKind::Nak(Some(delay))).await?,
            Settle::DeadLetter { reason } => {
                let mut headers = msg.headers.clone().unwrap_or_default();
                headers.insert(wire::H_ERROR, reason.as_str());
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{}/{}/dead", delivery.job.message.id, delivery.job.consumer).as_str(),
                );
                let subject = wire::dlq_subject(&delivery.job.message.channel);
                self.inner
                    .js
                    .publish_with_headers(subject.clone(), headers, msg.payload.clone())
                    .await
                    .map_err(|e| JetStreamError::Publish {
                        subject: subject.clone(),
                        reason: e.to_string(),
                    })?
                    .await
                    .map_err(|e| JetStreamError::Publish {
                        subject,
                        reason: e.to_string(),
                    })?;
                ack(AckKind::Term).await?;
            }
        }
        Ok(())
    }

    /// Ends a message that cannot even be decoded: kept as a dead letter,
    /// never redelivered.
    pub(super) async fn reject_undecodable(&self, msg: &jetstream::Message, reason: &str) {
        tracing::error!(subject = %msg.subject, %reason, "undecodable message dead-lettered");
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(wire::H_ERROR, reason);
        let subject = wire::dlq_subject(msg.subject.as_str());
        if let Ok(ack) = self
            .inner
            .js
            .publish_with_headers(subject, headers, msg.payload.clone())
            .await
        {
            let _ = ack.await;
        }
        let _ = msg.ack_with(AckKind::Term).await;
    }
}
