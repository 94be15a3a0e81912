//! Debounce on JetStream (`sluice-debounce`): a message with a debounce
//! key goes out as a server schedule (ADR-51) due at the end of its
//! window, on one schedule subject per (channel, key). The server keeps
//! one schedule per subject, so each new post of the key replaces the
//! pending one (body, headers and time) and only the last fires, once no
//! post of the key came for the window. Needs schedules (nats-server
//! 2.12 or later); without them the post is refused saying so.

use async_nats::jetstream::context::PublishAckFuture;
use sha2::{Digest as _, Sha256};

use super::super::wire::{self, Envelope, WireError};
use super::schedule::{SCHED_PREFIX, add_headers};
use super::{JetStream, JetStreamError};
use crate::message::now_ms;
use crate::store::NewMessage;

/// The schedule subject of (`channel`, `key`).
pub fn subject(channel: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(channel.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let token: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{SCHED_PREFIX}.d{token}")
}

impl JetStream {
    /// Sends `m` as the pending schedule of its debounce `key`, due
    /// `window_ms` from now (or at its own time, if later).
    pub(super) async fn send_debounced(
        &self,
        m: &NewMessage,
        key: &str,
        window_ms: i64,
    ) -> Result<PublishAckFuture, JetStreamError> {
        let target = wire::target(&m.message.channel, None, &m.message.headers);
        let rejected = |reason| JetStreamError::Rejected {
            subject: target.clone(),
            reason,
        };
        if !self.inner.schedules {
            return Err(rejected(WireError::NoSchedules {
                version: self.inner.server_version.clone(),
            }));
        }
        let now = now_ms();
        let at = m.visible_at.max(now.saturating_add(window_ms));
        // A schedule past the stream's `max_age` would be dropped before
        // it fires: refused like any other delay too long.
        self.wants_schedule(at, now).map_err(rejected)?;
        let mut headers = wire::headers(&Envelope {
            message: &m.message,
            dedupe_id: &m.message.id,
            not_before: Some(at),
            expires_at: m.expires_at,
        })
        .map_err(rejected)?;
        add_headers(&mut headers, at, &target).map_err(rejected)?;
        wire::check_size(
            &headers,
            m.message.body.len(),
            self.inner.client.max_payload(),
        )
        .map_err(rejected)?;
        self.inner
            .js
            .publish_with_headers(
                subject(&m.message.channel, key),
                headers,
                m.message.body.clone().into(),
            )
            .await
            .map_err(|e| JetStreamError::Publish {
                subject: target.clone(),
                reason: e.to_string(),
            })
    }
}
