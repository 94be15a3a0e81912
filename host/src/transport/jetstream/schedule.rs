//! Delays kept by the server, not by a consumer: ADR-51 message schedules
//! (nats-server 2.12 and later).
//!
//! Why: a delayed message published at once and NAKed until it is due is
//! a delivery the whole time, so it holds one of its host's slots (the
//! handler's concurrency); 64 messages delayed by an hour stall every due
//! message of the channel behind them.
//! A schedule instead is a message on a subject of its own
//! (`sluice-sched.<token>`, outside every consumer's filter), carrying the
//! whole Sluice message plus `Nats-Schedule: @at <time>` and
//! `Nats-Schedule-Target: <subject>`; when it falls due the server
//! publishes its body and headers to the target (a channel subject, or one
//! handler's `sluice-cont.` subject) and removes the schedule. Until then
//! nothing is delivered and nothing is pending.
//!
//! What goes through here: delayed posts of `sluice post` and the API, the
//! relay's delayed rows (a handler's delayed posts and continuations, retry
//! messages), and a delivery that arrives before its not-before time (a
//! foreign producer's `Sluice-Not-Before`, a schedule fired early by a
//! clock ahead of ours): it is rescheduled for its own handler and acked.
//!
//! Limits: a schedule is a stored message, so the stream's `max_age` would
//! remove it before it fires. A delay past `max_age` less a margin is
//! refused at post time; the relay holds its own rows locally until they
//! are within that horizon. On a server without schedules (2.10, 2.11)
//! nothing is scheduled: the relay holds rows until due, a delivery that
//! is not due yet is NAKed with its delay (the old behaviour), and a
//! delayed `sluice post` is refused with the server's version.

use std::time::{Duration, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};

use super::super::wire::{self, WireError};
use super::JetStream;

/// Subject prefix of schedules.
pub const SCHED_PREFIX: &str = "sluice-sched";

/// On a server without schedules, a delay shorter than this is still
/// taken (`sluice post`, the API): the delivery is NAKed for it. Longer
/// ones are refused there. With schedules every delay is one, however
/// short: a NAKed delivery would hold a consumer slot meanwhile (the server
/// fires a schedule whose time is near or past within about 250 ms).
pub const MIN_SCHEDULED_MS: i64 = 2_000;

/// How far before the stream's `max_age` a schedule must fire.
pub const MAX_AGE_MARGIN: Duration = Duration::from_secs(60);

/// Whether the server (its version string, e.g. `2.15.1`) supports
/// schedules.
pub fn server_supports(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 12)
}

/// The schedule subject of the message whose dedupe id is `dedupe_id`:
/// one subject per message, so schedules never replace each other.
pub fn subject(dedupe_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(dedupe_id.as_bytes());
    let token: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SCHED_PREFIX}.{token}")
}

/// Adds the schedule headers: fire at Unix ms `at`, to `target`.
pub fn add_headers(headers: &mut HeaderMap, at: i64, target: &str) -> Result<(), WireError> {
    let when = UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0));
    let at = format!("@at {}", humantime::format_rfc3339_millis(when));
    wire::append(headers, "Nats-Schedule", &at)?;
    wire::append(headers, "Nats-Schedule-Target", target)
}

impl JetStream {
    /// How far ahead (ms) a message may be scheduled: the stream's
    /// `max_age` less [`MAX_AGE_MARGIN`]; 0 without schedules.
    pub(super) fn schedule_horizon_ms(&self) -> i64 {
        if !self.inner.schedules {
            return 0;
        }
        let horizon = self
            .inner
            .settings
            .max_age
            .saturating_sub(MAX_AGE_MARGIN)
            .as_millis();
        i64::try_from(horizon).unwrap_or(i64::MAX)
    }

    /// Whether a message due at `at` (Unix ms) should go out as a schedule
    /// now (`Ok(true)`), as a plain message (`Ok(false)`: due, or a short
    /// delay on a server without schedules), or cannot be kept (the error
    /// says why).
    pub(super) fn wants_schedule(&self, at: i64, now: i64) -> Result<bool, WireError> {
        let delay = at.saturating_sub(now);
        if delay <= 0 {
            return Ok(false);
        }
        if !self.inner.schedules {
            if delay < MIN_SCHEDULED_MS {
                return Ok(false);
            }
            return Err(WireError::NoSchedules {
                version: self.inner.server_version.clone(),
            });
        }
        let horizon = self.schedule_horizon_ms();
        if delay > horizon {
            return Err(WireError::DelayTooLong {
                delay_s: delay / 1000,
                max_s: horizon / 1000,
            });
        }
        Ok(true)
    }

    /// Publishes `headers` and `body` as a schedule firing at `at` to
    /// `target`; `dedupe_id` names it (its subject and `Nats-Msg-Id`).
    pub(super) async fn publish_schedule(
        &self,
        target: &str,
        mut headers: HeaderMap,
        body: bytes::Bytes,
        at: i64,
        dedupe_id: &str,
    ) -> Result<PublishAckFuture, ScheduleError> {
        add_headers(&mut headers, at, target)?;
        wire::check_size(&headers, body.len(), self.inner.client.max_payload())?;
        let ack = self
            .inner
            .js
            .publish_with_headers(subject(dedupe_id), headers, body)
            .await?;
        self.expect_at(target, at);
        Ok(ack)
    }
}

/// Why a schedule could not be sent.
#[derive(Debug, thiserror::Error)]
pub(super) enum ScheduleError {
    /// It cannot be framed (too large with the schedule headers).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The publish failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_with_schedules() {
        for v in ["2.12.0", "2.15.1", "v2.12.3", "3.0.0", "2.12.0-beta.1"] {
            assert!(server_supports(v), "{v}");
        }
        for v in ["2.11.9", "2.10.0", "", "garbage"] {
            assert!(!server_supports(v), "{v}");
        }
    }

    #[test]
    fn schedule_headers_and_subjects() {
        let mut h = HeaderMap::new();
        add_headers(&mut h, 1_700_000_000_123, "sluice.a.b").expect("headers");
        assert_eq!(
            h.get("Nats-Schedule").map(|v| v.as_str()),
            Some("@at 2023-11-14T22:13:20.123Z")
        );
        assert_eq!(subject("x"), subject("x"));
        assert_ne!(subject("x"), subject("y"));
        assert_eq!(wire::check_subject(&subject("a b\n.c")), Ok(()));
    }
}
