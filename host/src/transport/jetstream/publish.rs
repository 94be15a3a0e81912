//! Publishing straight to the stream (not through the outbox): `sluice
//! post`, the HTTP API's posts, and dead-letter replays.

use super::super::wire::{self, Envelope};
use super::schedule::ScheduleError;
use super::{JetStream, JetStreamError};
use crate::message::{ATTEMPT_HEADER, CURSOR_HEADER, SLICE_HEADER, now_ms};
use crate::store::{JobRecord, NewMessage, Published};

impl JetStream {
    /// Publishes each message to its channel's subject; a message delayed
    /// into the future goes as a schedule the server fires when it is due
    /// (see `schedule`), carrying its not-before time too.
    pub(super) async fn publish_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Published>, JetStreamError> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let now = now_ms();
            let duplicate = self
                .publish_one(
                    &wire::subject(&m.message.channel),
                    &m.message,
                    &m.message.id,
                    (m.visible_at > now).then_some(m.visible_at),
                    m.expires_at,
                )
                .await?;
            out.push(Published {
                message_id: m.message.id,
                job_ids: Vec::new(),
                duplicate,
            });
        }
        Ok(out)
    }

    /// Re-publishes a job (replayed from the dead letters) to its handler
    /// only, resuming from its cursor.
    pub async fn replay(&self, job: &JobRecord) -> Result<(), JetStreamError> {
        let mut headers = job.headers.clone();
        // A replay starts its attempts afresh.
        headers.retain(|(k, _)| k != CURSOR_HEADER && k != SLICE_HEADER && k != ATTEMPT_HEADER);
        if let Some(c) = &job.cursor {
            headers.push((CURSOR_HEADER.into(), c.clone()));
        }
        headers.push((SLICE_HEADER.into(), job.slices.to_string()));
        let message = crate::message::Message {
            id: job.message_id.clone(),
            channel: job.channel.clone(),
            kind: crate::message::MessageKind::parse(&job.kind).unwrap_or_default(),
            headers,
            body: job.body.clone().into_bytes(),
        };
        let dedupe = format!("{}/{}/replay/{}", job.message_id, job.consumer, job.replays);
        let subject = wire::continuation_subject(&job.consumer, &job.channel);
        self.publish_one(&subject, &message, &dedupe, None, job.expires_at)
            .await
            .map(|_| ())
    }

    async fn publish_one(
        &self,
        subject: &str,
        message: &crate::message::Message,
        dedupe_id: &str,
        not_before: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<bool, JetStreamError> {
        let err = |e: String| JetStreamError::Publish {
            subject: subject.to_owned(),
            reason: e,
        };
        let rejected = |reason| JetStreamError::Rejected {
            subject: subject.to_owned(),
            reason,
        };
        wire::check_subject(subject).map_err(rejected)?;
        // A delay is kept by the server (a schedule), never by a consumer
        // slot; one it cannot keep is refused here, before anything is sent.
        let at = match not_before {
            Some(at) if self.wants_schedule(at, now_ms()).map_err(rejected)? => Some(at),
            _ => None,
        };
        let headers = wire::headers(&Envelope {
            message,
            dedupe_id,
            not_before,
            expires_at,
        })
        .map_err(rejected)?;
        wire::check_size(
            &headers,
            message.body.len(),
            self.inner.client.max_payload(),
        )
        .map_err(rejected)?;
        let body: bytes::Bytes = message.body.clone().into();
        let sent = match at {
            Some(at) => self
                .publish_schedule(subject, headers, body, at, dedupe_id)
                .await
                .map_err(|e| match e {
                    ScheduleError::Wire(w) => rejected(w),
                    ScheduleError::Publish(p) => err(p.to_string()),
                })?,
            None => self
                .inner
                .js
                .publish_with_headers(subject.to_owned(), headers, body)
                .await
                .map_err(|e| err(e.to_string()))?,
        };
        let ack = sent.await.map_err(|e| err(e.to_string()))?;
        Ok(ack.duplicate)
    }
}
