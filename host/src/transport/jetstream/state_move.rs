//! The one-time move of this host's SQLite state into the shared store, at
//! start, before any pump runs (`[nats] shared_state`, on by default on
//! JetStream): a host that kept its plugins' state in its own SQLite (an
//! older version, or `shared_state = false` before) brings it along.
//!
//! Each key with a value is published to its subject with
//! `Nats-Expected-Last-Subject-Sequence: 0`: stored only if the shared
//! store has no message for the key. A key the shared store has already
//! (another host moved or wrote it first, or this host's own move stored
//! it before it was interrupted) keeps the shared value: this host's is
//! dropped, and the host says so, key by key (the first
//! [`LOGGED_KEYS`] of each plugin), with why. When every key of a plugin
//! is through, the plugin is recorded moved in SQLite (`state_moved`), so
//! it happens once.
//!
//! Why a `kill -9` in the middle loses nothing and applies nothing twice:
//! nothing is removed from SQLite, and a key is only ever created in the
//! shared store, never overwritten. A move that stops half way is done
//! again at the next start; the keys it stored already are found present
//! and kept as they are (a job of another host may have changed them
//! since: that change stays too). A plugin is recorded moved only after
//! every key of it was answered. Pumps start after the move, so no job of
//! this host reads the shared store before its keys are there.
//!
//! The SQLite copy stays as it was: unused while state is shared (if
//! `shared_state` is switched off again the host goes back to it, as it
//! was at the move).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use futures_util::StreamExt as _;

use super::state::key_subject;
use super::{JetStream, JetStreamError};
use crate::store::Moved;

/// Keys read from SQLite at a time.
const PAGE: usize = 500;
/// Publishes awaited at once.
const IN_FLIGHT: usize = 64;
/// Keys named in the log per plugin (then a count).
const LOGGED_KEYS: usize = 100;
/// How long one key's publish may wait for its answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What became of one key.
enum Fate {
    Moved,
    Kept,
    /// Too large for the server's messages: left in SQLite only.
    Left(String),
}

impl JetStream {
    /// Moves every plugin's state this host's SQLite holds and has not
    /// moved yet (module docs). An error (the server went away) ends the
    /// start's attempt; the next attempt moves again from the first key.
    pub(crate) async fn move_local_state(&self) -> Result<(), JetStreamError> {
        let store = &self.inner.store;
        for plugin in store.state_to_move().await? {
            let moved = self.move_plugin(&plugin).await?;
            store.state_moved(&plugin, moved).await?;
            tracing::info!(
                plugin = %plugin, moved = moved.moved, kept_shared = moved.kept, left = moved.left,
                "moved this host's state of the plugin to the shared store ([nats] shared_state); it is not moved again"
            );
        }
        Ok(())
    }

    async fn move_plugin(&self, plugin: &str) -> Result<Moved, JetStreamError> {
        let store = &self.inner.store;
        let mut done = Moved::default();
        let mut after: Option<String> = None;
        loop {
            let page = store.state_page(plugin, after.as_deref(), PAGE).await?;
            let Some((last, _)) = page.last() else {
                return Ok(done);
            };
            after = Some(last.clone());
            let fates = futures_util::stream::iter(page)
                .map(|(key, value)| async move {
                    let fate = self.move_key(plugin, &key, value).await;
                    (key, fate)
                })
                .buffered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await;
            for (key, fate) in fates {
                let logged = done.kept + done.left < LOGGED_KEYS;
                match fate? {
                    Fate::Moved => done.moved += 1,
                    Fate::Kept => {
                        done.kept += 1;
                        if logged {
                            tracing::warn!(plugin = %plugin, key = %key, "state key already in the shared store (another host wrote it, or this host's interrupted move stored it): the shared value is kept, this host's dropped");
                        }
                    }
                    Fate::Left(why) => {
                        done.left += 1;
                        if logged {
                            tracing::error!(plugin = %plugin, key = %key, error = %why, "state key cannot be moved to the shared store: it stays in this host's SQLite only, and jobs now read it as absent");
                        }
                    }
                }
            }
        }
    }

    async fn move_key(
        &self,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Fate, JetStreamError> {
        let subject = key_subject(plugin, key);
        let err = |reason: String| JetStreamError::Publish {
            subject: subject.clone(),
            reason,
        };
        let mut tries = 0;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            let sent = self
                .inner
                .js
                .publish_with_headers(subject.clone(), headers, value.clone().into())
                .await;
            let ack = match sent {
                Ok(ack) => tokio::time::timeout(TIMEOUT, ack)
                    .await
                    .map_err(|_| err(format!("no answer in {TIMEOUT:?}")))?,
                Err(e) => Err(e),
            };
            match ack {
                Ok(_) => return Ok(Fate::Moved),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Ok(Fate::Kept),
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Ok(Fate::Left(e.to_string()));
                }
                // A replicated stream with another write of the key in
                // flight cannot check the expectation yet: ask again.
                Err(e) if format!("{e:?}").contains("10164") && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(err(e.to_string())),
            }
        }
    }
}
