//! Unique jobs on JetStream (`sluice-unique`, see
//! `crate::message::options`): the key is an entry of the KV bucket
//! [`BUCKET`] (key: sha256 of channel and uniqueness key; value: a
//! [`Holder`], the message holding it), written with an expected revision
//! (0: "must not exist", or the revision last read) and a per-entry
//! time-to-live (`sluice-unique-for`), before the message is published.
//! Every change of hands is one compare-and-set on that one entry, so of
//! any number of writers on any number of hosts exactly one wins each
//! revision.
//!
//! - A post (`claim_unique`) creates the entry. Finding it held, a
//!   `reject` post is refused naming the holder; a `replace` post writes
//!   itself over a *waiting* holder at the revision it read (the holder
//!   is then replaced), and is refused like a reject when the holder is
//!   running.
//! - A host about to run a holder's job (`start_unique`) marks the entry
//!   running, at the revision it read. So a replace and a start of the
//!   same holder race for one revision: either the replace wins (the
//!   start sees it and records the job cancelled without running it) or
//!   the start wins (the replace reads "running" and is refused). Two
//!   holders never both run.
//! - A replaced message is named twice: in the new holder's entry
//!   (`replaced`), and, once that write won, in a tombstone of its own
//!   (`replaced.<hash>`, kept as long as the stream keeps messages),
//!   which a later delivery of it finds after the entry changed hands
//!   again or was released. Whoever writes over an entry naming a
//!   replaced message writes that message's tombstone first, so a
//!   replacer that died between its write and its tombstone loses
//!   nothing.
//! - The host that ends the message's job (settle: succeeded, dead
//!   letter, expired, cancelled) deletes the entry if it still names that
//!   message (expected revision), so the key is free again; a retry, the
//!   next slice or a hand-back marks it waiting again. A host killed
//!   before that leaves it to the job's redelivery, or to the TTL.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{JetStream, JetStreamError};
use crate::message::options::{OnDuplicate, Unique};

/// The bucket of held uniqueness keys.
pub const BUCKET: &str = "SLUICE_UNIQUE";

/// Writes before giving up when the entry keeps changing between a lost
/// compare-and-set and the next read. Each lost write means another
/// writer won that revision, so 64 replace posts of one key at once need
/// at most 64 rounds; this leaves room for more.
const TRIES: usize = 256;

/// Who holds a key: the entry's value (JSON; a plain message id, as older
/// versions wrote, reads as a waiting holder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    /// The message holding the key.
    #[serde(rename = "m")]
    message: String,
    /// A host has started one of its jobs (a replace is refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    running: bool,
    /// The message this one replaced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaced: Option<String>,
}

impl Holder {
    fn read(value: &[u8]) -> Holder {
        serde_json::from_slice(value).unwrap_or_else(|_| Holder {
            message: String::from_utf8_lossy(value).into_owned(),
            running: false,
            replaced: None,
        })
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What a post's claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim {
    /// This post holds the key now: publish it (and release the key if
    /// the publish stores nothing). `replaced`: the waiting message it
    /// took the key from, which will not run.
    Taken {
        /// The message replaced.
        replaced: Option<String>,
    },
    /// The post's own message holds it already (a repost): publish it,
    /// the stream's duplicate window or the inbox makes it the same one.
    Own,
    /// Another message holds it (a reject, or a replace of a running
    /// holder): not published.
    Held(String),
}

/// What a delivery of a message with a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UniqueStart {
    /// Run it.
    Run,
    /// It was replaced by message `by`: record it cancelled, never run it.
    Replaced {
        /// The message that replaced it.
        by: String,
    },
}

/// The bucket key of (`channel`, `key`): one token, any key.
fn entry_key(channel: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(channel.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The bucket key of the tombstone of message `id` of `channel`, replaced
/// (another namespace than the keys': `replaced.` + hash).
fn tombstone_key(channel: &str, id: &str) -> String {
    format!("replaced.{}", entry_key(channel, id))
}

fn failed(e: impl std::fmt::Display) -> JetStreamError {
    JetStreamError::Unique(e.to_string())
}

/// Whether a write lost its expected-revision check to another write:
/// 10071, or 10164 from a replicated stream while another write to the
/// key is in flight (async-nats maps only the first to `WrongLastSequence`).
fn lost_race(e: &PublishError) -> bool {
    e.kind() == PublishErrorKind::WrongLastSequence
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|api| api.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
}

/// An entry as read: its revision and holder (`None`: deleted, expired or
/// never written; revision 0 when there is no trace of it).
type Read = (u64, Option<Holder>);

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

    /// Claims `unique` on `channel` for message `id` (see the module docs
    /// and [`Claim`]).
    pub(super) async fn claim_unique(
        &self,
        channel: &str,
        id: &str,
        unique: &Unique,
    ) -> Result<Claim, JetStreamError> {
        let kv = self.unique_bucket().await?;
        let key = entry_key(channel, &unique.key);
        // First as "must not exist"; after a lost write, at the revision
        // read (a release's or the TTL's delete marker, or a holder).
        let mut read: Read = (0, None);
        for _ in 0..TRIES {
            let replaced = match &read.1 {
                None => None,
                Some(h) if h.message == id => {
                    if let Some(r) = &h.replaced {
                        self.tombstone(kv, channel, r, id).await?;
                    }
                    return Ok(Claim::Own);
                }
                Some(h) if h.running || unique.on_duplicate == OnDuplicate::Reject => {
                    return Ok(Claim::Held(h.message.clone()));
                }
                Some(h) => {
                    // The entry stops naming the message it replaced:
                    // that one's tombstone must stand first.
                    if let Some(r) = &h.replaced {
                        self.tombstone(kv, channel, r, &h.message).await?;
                    }
                    Some(h.message.clone())
                }
            };
            let mine = Holder {
                message: id.to_owned(),
                running: false,
                replaced: replaced.clone(),
            };
            match self
                .write_entry(kv, &key, &mine.bytes(), unique.ttl, Some(read.0))
                .await
            {
                Ok(()) => {
                    if let Some(r) = &replaced {
                        self.tombstone(kv, channel, r, id).await?;
                        tracing::info!(%channel, key = %unique.key, message_id = %id, replaced = %r, "post replaced the waiting holder of its unique key");
                    }
                    return Ok(Claim::Taken { replaced });
                }
                Err(e) if lost_race(&e) => {}
                Err(e) => return Err(failed(e)),
            }
            read = read_entry(kv, &key).await?;
        }
        Err(failed(format!(
            "uniqueness key {:?} changed hands {TRIES} times in a row",
            unique.key
        )))
    }

    /// Whether a delivery of message `id` (with key `unique` on `channel`)
    /// may run: marks the entry running if `id` holds it (see the module
    /// docs); a message that no longer holds it runs unless it was
    /// replaced (its key merely expired).
    pub(super) async fn start_unique(
        &self,
        channel: &str,
        id: &str,
        unique: &Unique,
    ) -> Result<UniqueStart, JetStreamError> {
        let kv = self.unique_bucket().await?;
        let key = entry_key(channel, &unique.key);
        for _ in 0..TRIES {
            let (revision, holder) = read_entry(kv, &key).await?;
            match holder {
                // Running already: a redelivery (its host died, or a
                // retry's own delivery overtook the mark's reset).
                Some(h) if h.message == id && h.running => return Ok(UniqueStart::Run),
                Some(h) if h.message == id => {
                    let mark = Holder { running: true, ..h };
                    match self
                        .write_entry(kv, &key, &mark.bytes(), unique.ttl, Some(revision))
                        .await
                    {
                        Ok(()) => return Ok(UniqueStart::Run),
                        Err(e) if lost_race(&e) => {}
                        Err(e) => return Err(failed(e)),
                    }
                }
                Some(h) if h.replaced.as_deref() == Some(id) => {
                    return Ok(UniqueStart::Replaced { by: h.message });
                }
                _ => {
                    let tomb = kv.get(tombstone_key(channel, id)).await.map_err(failed)?;
                    return Ok(match tomb {
                        Some(by) => UniqueStart::Replaced {
                            by: String::from_utf8_lossy(&by).into_owned(),
                        },
                        None => UniqueStart::Run,
                    });
                }
            }
        }
        Err(failed(format!(
            "uniqueness key {:?} changed hands {TRIES} times in a row",
            unique.key
        )))
    }

    /// Marks the key of message `id` waiting again (its job goes on later:
    /// a retry, the next slice, a hand-back), so a replace may take it.
    /// Failures are logged: the key then stays running until the job's
    /// next start and end, or its TTL.
    pub(super) async fn unmark_unique(&self, channel: &str, id: &str, unique: &Unique) {
        let unmarked = async {
            let kv = self.unique_bucket().await?;
            let key = entry_key(channel, &unique.key);
            let (revision, holder) = read_entry(kv, &key).await?;
            if let Some(h) = holder
                && h.message == id
                && h.running
            {
                let waiting = Holder {
                    running: false,
                    ..h
                };
                match self
                    .write_entry(kv, &key, &waiting.bytes(), unique.ttl, Some(revision))
                    .await
                {
                    // Lost: another host's start of it (a redelivery) or
                    // its TTL changed the entry; theirs stands.
                    Ok(()) => {}
                    Err(e) if lost_race(&e) => {}
                    Err(e) => return Err(failed(e)),
                }
            }
            Ok::<(), JetStreamError>(())
        }
        .await;
        if let Err(e) = unmarked {
            tracing::warn!(message_id = %id, key = %unique.key, error = %e, "cannot mark a uniqueness key waiting again; a replace is refused until its job runs again");
        }
    }

    /// Gives the key back to `holder`, which message `id` replaced but
    /// whose publish stored nothing (a resend of an id stored before, a
    /// message the wire refused): the entry names `holder` waiting again
    /// and its tombstone goes, if the entry still names `id` (else a later
    /// replace took it, and `holder` stays replaced). A delivery of
    /// `holder` that started in between found it replaced: that one is
    /// cancelled. Failures are logged: `holder` then stays replaced.
    pub(super) async fn restore_unique(
        &self,
        channel: &str,
        id: &str,
        unique: &Unique,
        holder: &str,
    ) {
        let restored = async {
            let kv = self.unique_bucket().await?;
            let key = entry_key(channel, &unique.key);
            let (revision, h) = read_entry(kv, &key).await?;
            if h.is_none_or(|h| h.message != id) {
                return Ok(());
            }
            let back = Holder {
                message: holder.to_owned(),
                running: false,
                replaced: None,
            };
            match self
                .write_entry(kv, &key, &back.bytes(), unique.ttl, Some(revision))
                .await
            {
                Ok(()) => {}
                Err(e) if lost_race(&e) => return Ok(()),
                Err(e) => return Err(failed(e)),
            }
            kv.delete(tombstone_key(channel, holder))
                .await
                .map_err(failed)?;
            Ok::<(), JetStreamError>(())
        }
        .await;
        if let Err(e) = restored {
            tracing::warn!(message_id = %id, %holder, key = %unique.key, error = %e, "a replace that queued nothing cannot give the key back; its holder stays replaced");
        }
    }

    /// Writes the tombstone of message `replaced` of `channel`: replaced
    /// by `by`, kept as long as the stream keeps messages (no delivery of
    /// it outlives that).
    async fn tombstone(
        &self,
        kv: &kv::Store,
        channel: &str,
        replaced: &str,
        by: &str,
    ) -> Result<(), JetStreamError> {
        self.write_entry(
            kv,
            &tombstone_key(channel, replaced),
            by.as_bytes(),
            self.inner.settings.max_age,
            None,
        )
        .await
        .map_err(failed)
    }

    /// Writes entry `key` with `value` and time-to-live `ttl`, if the
    /// key's last revision is `expect` (0: none; `None`: whatever it is).
    /// Not `kv::Store::create`/`update`: over a delete marker they write
    /// the entry without its TTL, so a key released once and taken again
    /// was held for ever by a host killed before its release.
    async fn write_entry(
        &self,
        kv: &kv::Store,
        key: &str,
        value: &[u8],
        ttl: Duration,
        expect: Option<u64>,
    ) -> Result<(), PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(expect) = expect {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                expect.to_string().as_str(),
            );
        }
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
            .publish_with_headers(subject, headers, value.to_vec().into())
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
            let (revision, holder) = read_entry(kv, &key).await?;
            if let Some(h) = holder
                && h.message == id
            {
                if let Some(r) = &h.replaced {
                    self.tombstone(kv, channel, r, id).await?;
                }
                kv.delete_expect_revision(&key, Some(revision))
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

/// Entry `key` as it is now.
async fn read_entry(kv: &kv::Store, key: &str) -> Result<Read, JetStreamError> {
    Ok(match kv.entry(key).await.map_err(failed)? {
        Some(e) if e.operation == kv::Operation::Put => (e.revision, Some(Holder::read(&e.value))),
        // Released (or expired): taken at the marker's revision.
        Some(e) => (e.revision, None),
        None => (0, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_reads_back_and_an_older_plain_id_reads_as_waiting() {
        let h = Holder {
            message: "m 1\n{\"m\":\"x\"}".into(),
            running: true,
            replaced: Some("ü".into()),
        };
        assert_eq!(Holder::read(&h.bytes()), h);
        let plain = Holder::read(b"01J9-abc");
        assert_eq!(
            plain,
            Holder {
                message: "01J9-abc".into(),
                running: false,
                replaced: None
            }
        );
        // A waiting holder that replaced nothing: the id alone.
        let waiting = Holder {
            running: false,
            replaced: None,
            ..h
        };
        assert_eq!(waiting.bytes(), br#"{"m":"m 1\n{\"m\":\"x\"}"}"#.to_vec());
    }

    #[test]
    fn a_tombstone_never_collides_with_a_key() {
        assert_ne!(tombstone_key("c", "k"), entry_key("c", "k"));
        assert!(tombstone_key("c", "k").starts_with("replaced."));
    }
}
