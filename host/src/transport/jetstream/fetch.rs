//! Pulling deliveries: a batch from the consumer, decoded and recorded in
//! this host's inbox in one store operation; what the inbox says was done
//! already is acked here, and only the rest reaches the pump.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

use super::super::wire;
use super::super::{Delivery, Receipt, Subscription, TransportError};
use super::{JetStream, consumer_name};
use crate::message::now_ms;
use crate::store::{Delivered, JobState, Received, ServerDelivery};

/// How soon a cancelled job's delivery comes back when its commit marker
/// could not be read.
const MARKER_RETRY: Duration = Duration::from_secs(1);

/// The id of a message published without one (a plain `js.publish` from
/// any NATS client): its stream sequence and the time the server stored
/// it, the same on every redelivery and never reused, even by a stream that
/// was deleted and created again.
fn stored_id(msg: &jetstream::Message) -> Option<String> {
    let info = msg.info().ok()?;
    Some(format!(
        "nats-{}-{}",
        info.stream_sequence,
        info.published.unix_timestamp_nanos()
    ))
}

impl JetStream {
    /// Up to `max` deliveries of `subscription` that should run now.
    pub(super) async fn fetch_deliveries(
        &self,
        subscription: &Subscription,
        max: usize,
    ) -> Result<Vec<Delivery>, TransportError> {
        let pulled = self.pull(subscription, max).await?;
        if pulled.is_empty() {
            return Ok(Vec::new());
        }
        // The whole pull is recorded in the inbox in one store operation
        // (one commit round trip), not one per message.
        let ids: Vec<String> = pulled.iter().map(|(_, d)| d.message.id.clone()).collect();
        let (msgs, delivered): (Vec<_>, Vec<_>) = pulled.into_iter().unzip();
        let received = self.inner.store.receive_all(delivered).await?;
        let mut out = Vec::with_capacity(received.len());
        for ((msg, id), received) in msgs.into_iter().zip(ids).zip(received) {
            if let Some(delivery) = self.on_received(subscription, msg, &id, received).await {
                out.push(delivery);
            }
        }
        Ok(out)
    }

    /// Pulls up to `max` messages of `subscription` and decodes them, each
    /// with what the inbox records of it (an undecodable one is set aside
    /// here).
    pub(super) async fn pull(
        &self,
        subscription: &Subscription,
        max: usize,
    ) -> Result<Vec<(jetstream::Message, Delivered)>, TransportError> {
        let Some(consumer) = self.consumer(subscription) else {
            tokio::time::sleep(self.inner.settings.fetch_wait).await;
            return Ok(Vec::new());
        };
        let name = consumer_name(subscription);
        // Take what is there now without waiting (a batch pull would hold
        // its messages until it is full or expires), shared between the
        // priority levels (`priority.rs`); only when nothing is there, wait
        // up to `fetch_wait` for the first message to arrive.
        let messages = self
            .pull_levels(subscription, &consumer, &name, max)
            .await?;
        let mut pulled = Vec::with_capacity(messages.len());
        for msg in messages {
            let decoded = match wire::decode(
                msg.subject.as_str(),
                msg.headers.as_ref(),
                &msg.payload,
                stored_id(&msg),
            ) {
                Ok(d) => d,
                Err(reason) => {
                    self.reject_undecodable(&msg, &reason).await;
                    continue;
                }
            };
            let attempts_before = decoded
                .message
                .header(crate::message::ATTEMPT_HEADER)
                .and_then(|a| a.trim().parse().ok())
                .unwrap_or(0);
            let replay = decoded
                .message
                .header(crate::message::REPLAY_HEADER)
                .and_then(|a| a.trim().parse().ok())
                .unwrap_or(0);
            let delivered = Delivered {
                consumer: subscription.consumer.clone(),
                message: decoded.message,
                slice: decoded.slice,
                cursor: decoded.cursor,
                not_before: due_by_server_clock(&msg, decoded.not_before),
                expires_at: decoded.expires_at,
                attempts_before,
                replay,
                server: msg.info().ok().map(|info| ServerDelivery {
                    stream_seq: info.stream_sequence,
                    count: u64::try_from(info.delivered).unwrap_or(1),
                }),
            };
            pulled.push((msg, delivered));
        }
        Ok(pulled)
    }

    /// What to do with a pulled message, once the inbox recorded it: run
    /// it (the delivery), or nothing more here (acked: done already;
    /// carried on to its not-before time).
    pub(super) async fn on_received(
        &self,
        subscription: &Subscription,
        msg: jetstream::Message,
        id: &str,
        received: Received,
    ) -> Option<Delivery> {
        match received {
            Received::Run(job) => Some(Delivery {
                job,
                receipt: Receipt::JetStream(Box::new(msg)),
                hold: None,
            }),
            Received::Done(state) => {
                if state == JobState::Cancelled
                    && self.inner.settings.shared_state
                    && !self.cancel_lost_to_a_commit(subscription, &msg, id).await
                {
                    // The marker could not be read: the delivery comes back.
                    let _ = msg.ack_with(AckKind::Nak(Some(MARKER_RETRY))).await;
                    return None;
                }
                tracing::debug!(%state, "redelivered message already handled here; acking");
                let _ = msg.ack().await;
                // Its job is over: a uniqueness key it holds is free.
                self.release_unique_of(&msg).await;
                None
            }
            Received::Dead { reason } => {
                // The settle's copy failed after the store recorded the
                // job dead (a server restart, a refusing stream): copy it
                // now, with the same dedupe id, then end it. If it fails
                // again the message is asked back soon (`copy_again_soon`);
                // nothing is lost.
                let sub = subscription;
                match self
                    .dead_letter(&msg, &sub.channel, id, &sub.consumer, &reason)
                    .await
                {
                    Ok(()) => {
                        let _ = msg.ack_with(AckKind::Term).await;
                        self.release_unique_of(&msg).await;
                    }
                    Err(e) => {
                        tracing::warn!(message_id = %id, error = %e, "dead letter not copied yet; its message will come back");
                        self.copy_again_soon(&msg).await;
                    }
                }
                None
            }
            Received::NotYet(at) => {
                self.not_yet(&msg, subscription, id, at).await;
                None
            }
        }
    }

    /// Shared state: a delivery of a job recorded cancelled here whose
    /// state batch a host stored before the cancel reached it (the host
    /// was killed after the batch, or its answer was lost, and an operator
    /// cancelled the job meanwhile). The marker is the fact: its outcome
    /// and posts are recorded over the cancel (else the state would be
    /// applied and the posts lost). True when settled either way (the
    /// delivery can be acked); false when the marker could not be read.
    async fn cancel_lost_to_a_commit(
        &self,
        sub: &Subscription,
        msg: &jetstream::Message,
        id: &str,
    ) -> bool {
        let Ok(decoded) = wire::decode(
            msg.subject.as_str(),
            msg.headers.as_ref(),
            &msg.payload,
            stored_id(msg),
        ) else {
            return true;
        };
        let job_id = crate::store::job_id_for(id, &sub.consumer);
        let name = crate::pump::marker::commit_name_of(
            &job_id,
            &decoded.message,
            decoded.cursor.as_deref(),
        );
        let body = match super::state::marker_body(&self.inner.client, &name).await {
            Ok(Some(body)) => body,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(%job_id, error = %e, "cannot look for the commit marker of a cancelled job; its message comes back");
                return false;
            }
        };
        let finish = match crate::pump::marker::decode(&body) {
            Ok((finish, _)) => finish,
            Err(e) => {
                tracing::error!(%job_id, error = %e, "a cancelled job's commit marker is unreadable; the cancel stands");
                return true;
            }
        };
        match self.inner.store.overturn_cancel(&job_id, finish).await {
            Ok(overturned) => {
                if overturned {
                    tracing::warn!(%job_id, "job cancelled after its state commit was stored: recorded as committed (its outcome and posts, from the commit marker)");
                    self.inner.relay_wake.notify_one();
                }
                true
            }
            Err(e) => {
                tracing::warn!(%job_id, error = %e, "cannot record a cancelled job's stored commit; its message comes back");
                false
            }
        }
    }

    /// A delivery that arrived before its not-before time `at`. Held by a
    /// NAK it would keep a consumer slot all that time, so with schedules a
    /// copy addressed to its handler is scheduled for `at` and this one is
    /// acked (a crash in between redelivers it, and the copy's id, made of
    /// the message id, consumer, time and stream sequence, makes the second
    /// schedule the same one), however short the wait. A
    /// server without schedules, or a failed copy, falls back to the NAK.
    async fn not_yet(&self, msg: &jetstream::Message, sub: &Subscription, id: &str, at: i64) {
        let now = now_ms();
        if self.wants_schedule(at, now).unwrap_or(false) {
            // The stream sequence makes the copy of each delivery its own
            // schedule: a redelivery of this one (crash before the ack)
            // gives the same id, which the duplicate window drops, while
            // a later message with the same id and time (e.g. a copy that
            // also came early) is not dropped as a duplicate and lost.
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            let dedupe = format!("{id}/{}/at/{at}/{seq}", sub.consumer);
            let target = wire::target_of(&sub.channel, Some(&sub.consumer), msg.headers.as_ref());
            let sent = match wire::forwarded_headers(msg.headers.as_ref(), id, &dedupe) {
                Ok(headers) => match self
                    .publish_schedule(&target, headers, msg.payload.clone(), at, &dedupe)
                    .await
                {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => {
                    let _ = msg.ack().await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "cannot schedule a message that is not due yet; holding it with a NAK instead");
                }
            }
        }
        let delay = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
        let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
    }
}

/// A message's not-before time, unless the server fired it from a schedule
/// (`Nats-Scheduler`): then it is due by the server's clock, which decides
/// every schedule, and runs now. Checked against this host's clock instead,
/// a host whose clock is behind the server's would find it early every time
/// the server fired it, and schedule it again for a time the server thinks
/// is past, in a loop that lasts as long as the clocks disagree.
fn due_by_server_clock(msg: &jetstream::Message, not_before: Option<i64>) -> Option<i64> {
    let fired = msg
        .headers
        .as_ref()
        .is_some_and(|h| h.get("Nats-Scheduler").is_some());
    if fired { None } else { not_before }
}
