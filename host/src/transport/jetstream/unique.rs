//! Unique jobs on JetStream (`sluice-unique`, see
//! `crate::message::options`): the key is an entry of the KV bucket
//! [`BUCKET`] (key: sha256 of channel and uniqueness key; value: the
//! message id holding it), created with revision 0 ("must not exist", or
//! the revision of the delete marker a release left) and
//! a per-entry time-to-live (`sluice-unique-for`), before the message is
//! published. So of 64 posts of one key at once, on any number of hosts,
//! exactly one creates the entry and is published; the others read the
//! holder and are refused naming it. The host that ends the message's
//! job (settle: succeeded, dead letter, expired, cancelled) deletes the
//! entry if it still names that message (expected revision), so the key
//! is free again; a host killed before that leaves it to the TTL.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv;
use sha2::{Digest as _, Sha256};

use super::{JetStream, JetStreamError};
use crate::message::options::Unique;

/// The bucket of held uniqueness keys.
pub const BUCKET: &str = "SLUICE_UNIQUE";

/// Creates before giving up when the entry keeps vanishing between a
/// refused create and the read of its holder.
const TRIES: usize = 5;

/// The bucket key of (`channel`, `key`): one token, any key.
fn entry_key(channel: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(channel.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn failed(e: impl std::fmt::Display) -> JetStreamError {
    JetStreamError::Unique(e.to_string())
}

/// Whether a create lost its expected-revision check to another write:
/// 10071, or 10164 from a replicated stream while another write to the
/// key is in flight (async-nats maps only the first to `WrongLastSequence`).
fn lost_race(e: &PublishError) -> bool {
    e.kind() == PublishErrorKind::WrongLastSequence
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|api| api.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
}

impl JetStream {
    /// The bucket, created if needed (per-entry TTLs allowed), opened
    /// once per connection. Hosts (and concurrent posts) may create it at
    /// the same moment: a create that fails is followed by one more open.
    async fn unique_bucket(&self) -> Result<&kv::Store, JetStreamError> {
        self.inner
            .unique
            .get_or_try_init(|| async {
                let context = async_nats::jetstream::new(self.client().clone());
                if let Ok(kv) = context.get_key_value(BUCKET).await {
                    return Ok(kv);
                }
                let created = context
                    .create_key_value(kv::Config {
                        bucket: BUCKET.to_owned(),
                        description: "sluice uniqueness keys: the message holding each".into(),
                        history: 1,
                        num_replicas: self.inner.settings.replicas,
                        limit_markers: Some(Duration::from_secs(1)),
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(kv) => Ok(kv),
                    Err(e) => context.get_key_value(BUCKET).await.map_err(|_| failed(e)),
                }
            })
            .await
    }

    /// Claims `unique` on `channel` for message `id`: `None` when this call
    /// created the entry (post it; release it if the post stores nothing),
    /// else the message holding it (`id` itself: a repost, which neither
    /// claims nor is refused).
    pub(super) async fn claim_unique(
        &self,
        channel: &str,
        id: &str,
        unique: &Unique,
    ) -> Result<Option<String>, JetStreamError> {
        let kv = self.unique_bucket().await?;
        let key = entry_key(channel, &unique.key);
        // The revision the entry must be at for this create to take it:
        // 0 (no entry yet), or the delete marker a release (or the TTL)
        // left. Either way it is one atomic expected-revision publish.
        let mut expect = 0;
        for _ in 0..TRIES {
            match self.create_entry(kv, &key, id, unique.ttl, expect).await {
                Ok(()) => return Ok(None),
                Err(e) if lost_race(&e) => {}
                Err(e) => return Err(failed(e)),
            }
            match kv.entry(&key).await.map_err(failed)? {
                Some(e) if e.operation == kv::Operation::Put => {
                    return Ok(Some(String::from_utf8_lossy(&e.value).into_owned()));
                }
                // Released (or expired): take it at the marker's revision.
                Some(e) => expect = e.revision,
                None => expect = 0,
            }
        }
        Err(failed(format!(
            "uniqueness key {:?} changed hands {TRIES} times in a row",
            unique.key
        )))
    }

    /// Writes entry `key` holding `id` with time-to-live `ttl`, if the
    /// key's last revision is `expect` (0: none). Not `kv::Store::create`:
    /// over a delete marker it writes the entry without its TTL, so a key
    /// released once and taken again was held for ever by a host killed
    /// before its release.
    async fn create_entry(
        &self,
        kv: &kv::Store,
        key: &str,
        id: &str,
        ttl: Duration,
        expect: u64,
    ) -> Result<(), PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expect.to_string().as_str(),
        );
        // Whole seconds, at least one (the server's smallest TTL).
        headers.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            ttl.as_secs().max(1).to_string().as_str(),
        );
        let subject = format!(
            "{}{key}",
            kv.put_prefix.as_deref().unwrap_or(kv.prefix.as_str())
        );
        self.inner
            .js
            .publish_with_headers(subject, headers, id.as_bytes().to_vec().into())
            .await?
            .await
            .map(|_| ())
    }

    /// Frees the key of a delivery that ended without running here (the
    /// inbox found its job done): `release_unique` of its message.
    pub(super) async fn release_unique_of(&self, msg: &async_nats::jetstream::Message) {
        let Ok(decoded) = super::super::wire::decode(
            msg.subject.as_str(),
            msg.headers.as_ref(),
            &msg.payload,
            None,
        ) else {
            return;
        };
        let m = decoded.message;
        if let Some(unique) = crate::message::options::unique(&m.headers) {
            self.release_unique(&m.channel, &m.id, &unique).await;
        }
    }

    /// Frees `unique` on `channel` if message `id` still holds it (its job
    /// ended). Failures are logged: the TTL frees the key in the end.
    pub(super) async fn release_unique(&self, channel: &str, id: &str, unique: &Unique) {
        let released = async {
            let kv = self.unique_bucket().await?;
            let key = entry_key(channel, &unique.key);
            if let Some(e) = kv.entry(&key).await.map_err(failed)?
                && e.operation == kv::Operation::Put
                && e.value.as_ref() == id.as_bytes()
            {
                kv.delete_expect_revision(&key, Some(e.revision))
                    .await
                    .map_err(failed)?;
            }
            Ok::<(), JetStreamError>(())
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(message_id = %id, key = %unique.key, error = %e, "cannot release a uniqueness key; it frees itself when its time-to-live ends");
        }
    }
}
