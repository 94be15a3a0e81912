//! Publishing straight to the stream (not through the outbox): `sluice
//! post`, the HTTP API's posts, and dead-letter replays.
//!
//! Publishes are pipelined: up to [`PIPELINE`] messages are sent before the
//! first ack is awaited, so a batch costs about one round trip, not one per
//! message. A message whose ack failed (or never came) is sent again, up to
//! [`ATTEMPTS`] sends, with the same `Nats-Msg-Id`: if an earlier copy was
//! stored after all, the stream's duplicate window drops the later one, so
//! a retry never queues a message twice (a message the wire refuses, e.g.
//! too large, is not resent). A message answered with an error
//! got no ack on any send; it is reported as not queued (it can only have
//! been stored if every ack was lost on the way back).

use std::collections::VecDeque;

use async_nats::jetstream::context::PublishAckFuture;

use super::super::wire::{self, Envelope};
use super::schedule::ScheduleError;
use super::unique::Claim;
use super::{JetStream, JetStreamError};
use crate::message::{now_ms, options};
use crate::store::{NewMessage, Published};

/// How many publishes may be waiting for their acks at once.
pub const PIPELINE: usize = 1024;

/// Sends of one message before its failure is final (see the module docs).
const ATTEMPTS: usize = 3;

impl JetStream {
    /// Publishes each message to its channel's subject; a message delayed
    /// into the future goes as a schedule the server fires when it is due
    /// (see `schedule`), carrying its not-before time. All or the first
    /// error; see [`JetStream::publish_each`] for the answer per message.
    pub(super) async fn publish_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Published>, JetStreamError> {
        self.publish_each(messages).await.into_iter().collect()
    }

    /// Publishes `messages`, pipelined, and answers for each, in order:
    /// stored (or a duplicate of one stored before), or why not after
    /// [`ATTEMPTS`] sends.
    pub async fn publish_each(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<Published, JetStreamError>> {
        let mut answers: Vec<Option<Result<bool, JetStreamError>>> =
            messages.iter().map(|_| None).collect();
        // A message whose uniqueness key another message holds is not
        // sent: it is answered with the holder (see `unique`).
        let mut held: Vec<Option<String>> = messages.iter().map(|_| None).collect();
        let mut claimed: Vec<Option<options::Unique>> = messages.iter().map(|_| None).collect();
        // The waiting holder a `replace` post took its key from.
        let mut replaced: Vec<Option<String>> = messages.iter().map(|_| None).collect();
        for (i, m) in messages.iter().enumerate() {
            let Some(unique) = options::unique(&m.message.headers) else {
                continue;
            };
            match self
                .claim_unique(&m.message.channel, &m.message.id, &unique)
                .await
            {
                Ok(Claim::Taken { replaced: r }) => {
                    claimed[i] = Some(unique);
                    replaced[i] = r;
                }
                // A repost of the holder: sent, the stream's duplicate
                // window or the inbox makes it the same message.
                Ok(Claim::Own) => {}
                Ok(Claim::Held(holder)) => {
                    held[i] = Some(holder);
                    answers[i] = Some(Ok(true));
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        let now = now_ms();
        let delayed: Vec<(usize, NewMessage)> = messages
            .iter()
            .enumerate()
            // A debounced one is recorded once it fires (its post may be
            // replaced by a later one of the same key).
            .filter(|(_, m)| m.visible_at > now && options::debounce(&m.message.headers).is_none())
            .map(|(i, m)| (i, m.clone()))
            .collect();
        let mut in_flight: VecDeque<(usize, String, PublishAckFuture)> = VecDeque::new();
        for (i, m) in messages.iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            if in_flight.len() >= PIPELINE
                && let Some((j, subject, ack)) = in_flight.pop_front()
            {
                answers[j] = Some(acked(&subject, ack).await);
            }
            let subject = wire::target(&m.message.channel, None, &m.message.headers);
            let sent = match options::debounce(&m.message.headers) {
                Some((key, window)) => {
                    let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
                    self.send_debounced(m, &key, window).await
                }
                None => self.send(&subject, m).await,
            };
            match sent {
                Ok(ack) => in_flight.push_back((i, subject, ack)),
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        for (j, subject, ack) in in_flight {
            answers[j] = Some(acked(&subject, ack).await);
        }
        let mut out = Vec::with_capacity(messages.len());
        for ((((m, answer), holder), claimed), replaced) in messages
            .into_iter()
            .zip(answers)
            .zip(held)
            .zip(claimed)
            .zip(replaced)
        {
            if let Some(holder) = holder {
                out.push(Ok(Published {
                    message_id: holder.clone(),
                    job_ids: Vec::new(),
                    duplicate: true,
                    duplicate_of: Some(holder),
                    replaced: Vec::new(),
                    replaced_message: None,
                }));
                continue;
            }
            let mut answer = answer.unwrap_or(Ok(false));
            let mut sends = 1;
            // A message the wire refused is refused again: not resent.
            while matches!(answer, Err(JetStreamError::Publish { .. })) && sends < ATTEMPTS {
                sends += 1;
                let subject = wire::target(&m.message.channel, None, &m.message.headers);
                let sent = match options::debounce(&m.message.headers) {
                    Some((key, window)) => {
                        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
                        self.send_debounced(&m, &key, window).await
                    }
                    None => self.send(&subject, &m).await,
                };
                answer = match sent {
                    Ok(ack) => acked(&subject, ack).await,
                    Err(e) => Err(e),
                };
            }
            // The key it claimed holds nothing only when the message is
            // surely not stored by this call (see `stored_nothing`).
            let nothing = stored_nothing(&answer, sends);
            if nothing && let Some(unique) = &claimed {
                let (channel, id) = (&m.message.channel, &m.message.id);
                match &replaced {
                    // The holder it replaced gets its key back.
                    Some(holder) => self.restore_unique(channel, id, unique, holder).await,
                    None => self.release_unique(channel, id, unique).await,
                }
            }
            out.push(answer.map(|duplicate| Published {
                message_id: m.message.id,
                job_ids: Vec::new(),
                duplicate,
                duplicate_of: None,
                replaced: Vec::new(),
                // Replaced only if this post is the one that goes on.
                replaced_message: if nothing { None } else { replaced.clone() },
            }));
        }
        // A delayed message is delivered only when due; this host records
        // its jobs now so that its job list and status show them meanwhile.
        let stored: Vec<NewMessage> = delayed
            .into_iter()
            .filter(|(i, _)| out.get(*i).is_some_and(Result::is_ok))
            .map(|(_, m)| m)
            .collect();
        if !stored.is_empty()
            && let Err(e) = self.inner.store.record_delayed_posts(stored).await
        {
            tracing::warn!(error = %e, "delayed messages posted, but this host could not record their jobs; they show once delivered");
        }
        out
    }

    /// Sends one message (its id is its `Nats-Msg-Id`) without waiting for
    /// the ack.
    async fn send(
        &self,
        subject: &str,
        m: &NewMessage,
    ) -> Result<PublishAckFuture, JetStreamError> {
        let now = now_ms();
        self.send_envelope(
            subject,
            &Envelope {
                message: &m.message,
                dedupe_id: &m.message.id,
                not_before: (m.visible_at > now).then_some(m.visible_at),
                expires_at: m.expires_at,
            },
        )
        .await
    }

    /// Sends one envelope without waiting for the ack. A subject, header,
    /// size or delay the wire refuses is `Rejected` before anything is
    /// sent. A message delayed into the future goes as a schedule the
    /// server fires when it is due (see `schedule`), never held by a
    /// consumer slot.
    async fn send_envelope(
        &self,
        subject: &str,
        envelope: &Envelope<'_>,
    ) -> Result<PublishAckFuture, JetStreamError> {
        let err = |e: String| JetStreamError::Publish {
            subject: subject.to_owned(),
            reason: e,
        };
        let rejected = |reason| JetStreamError::Rejected {
            subject: subject.to_owned(),
            reason,
        };
        wire::check_subject(subject).map_err(rejected)?;
        let at = match envelope.not_before {
            Some(at) if self.wants_schedule(at, now_ms()).map_err(rejected)? => Some(at),
            _ => None,
        };
        let headers = wire::headers(envelope).map_err(rejected)?;
        wire::check_size(
            &headers,
            envelope.message.body.len(),
            self.inner.client.max_payload(),
        )
        .map_err(rejected)?;
        let body: bytes::Bytes = envelope.message.body.clone().into();
        match at {
            Some(at) => self
                .publish_schedule(subject, headers, body, at, envelope.dedupe_id)
                .await
                .map_err(|e| match e {
                    ScheduleError::Wire(w) => rejected(w),
                    ScheduleError::Publish(p) => err(p.to_string()),
                }),
            None => self
                .inner
                .js
                .publish_with_headers(subject.to_owned(), headers, body)
                .await
                .map_err(|e| err(e.to_string())),
        }
    }

    /// Replays dead letter `id`: back in the queue and, in the same store
    /// transaction, its resuming message in the outbox (see
    /// `Store::replay_via_outbox`), which the relay publishes. False when
    /// `id` is not a dead letter.
    pub async fn replay(&self, id: &str) -> Result<bool, JetStreamError> {
        let replayed = self.inner.store.replay_via_outbox(id).await?;
        if replayed {
            self.inner.relay_wake.notify_one();
        }
        Ok(replayed)
    }
}

/// Waits for one ack: true if the stream already had the message.
async fn acked(subject: &str, ack: PublishAckFuture) -> Result<bool, JetStreamError> {
    ack.await
        .map(|a| a.duplicate)
        .map_err(|e| JetStreamError::Publish {
            subject: subject.to_owned(),
            reason: e.to_string(),
        })
}

/// Whether a publish's final `answer`, after `sends` sends, says for sure
/// that this call stored nothing, so a uniqueness key it claimed must be
/// freed: a duplicate on the first send (the id was stored before, by an
/// earlier post whose job may be over), or a refusal that was not resent.
/// A duplicate after a resend is the first send's own copy (its ack was
/// lost, the message was stored), and a send that kept failing may have
/// been stored: the key stays (its time-to-live frees it if not). Freeing
/// it then let a second post of the key in (two holders, seen under load).
fn stored_nothing(answer: &Result<bool, JetStreamError>, sends: usize) -> bool {
    match answer {
        Ok(true) => sends == 1,
        Ok(false) => false,
        Err(JetStreamError::Publish { .. }) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod unique_tests {
    use super::*;

    #[test]
    fn a_key_is_freed_only_when_the_message_is_surely_not_stored() {
        let lost = || JetStreamError::Publish {
            subject: "sluice.a".into(),
            reason: "timed out".into(),
        };
        assert!(stored_nothing(&Ok(true), 1), "an id stored before");
        assert!(!stored_nothing(&Ok(true), 2), "our own first send's copy");
        assert!(!stored_nothing(&Ok(false), 1));
        assert!(!stored_nothing(&Err(lost()), 3), "may be stored");
        assert!(stored_nothing(
            &Err(JetStreamError::Unique("refused".into())),
            1
        ));
    }
}
