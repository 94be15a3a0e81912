//! Plugin state shared by every host (`[nats] shared_state = true`): the
//! `SLUICE_STATE` stream is the one store of state, and the ledger
//! (`crate::state`, `remote.rs`) reads and commits through it.
//!
//! - One subject per key, `sluice-state.k.<plugin token>.v<key token>`
//!   (tokens as in `wire::handler_token`, so any name and key is one
//!   token), `max_msgs_per_subject = 1`: the last message is the value. A
//!   key's version is that message's stream sequence, so versions only grow
//!   and never repeat, across hosts and across a delete (an empty message
//!   with `Sluice-State: deleted`) and a re-create: no ABA.
//! - Reads are direct gets of the key's last message: the latest committed
//!   value, whichever host committed it.
//! - A commit is one ADR-50 atomic batch (nats-server 2.12 or later): every
//!   key it changes with `Nats-Expected-Last-Subject-Sequence` (its version
//!   when read; 0: absent), a check of every key it only read (not a
//!   write: `state_commit.rs`), and last the job's marker
//!   `sluice-state.c.<commit name>` expected absent. The server stores all of it or nothing; a stale read
//!   or a second commit of the same job (from any host, at any time) is
//!   refused with "wrong last sequence". The messages of a batch get
//!   consecutive sequences, the marker last, so the commit's answer gives
//!   every key's new version. Concurrent jobs of a host share one batch
//!   (`state_commit.rs`): the server's cost is per batch, not per message.
//!
//! The stream keeps state forever (`max_age` 0). Markers carry a
//! per-message TTL (`Nats-TTL`, the stream allows them) of twice the work
//! stream's `max_age` (see [`marker_ttl`] for why no job can come back
//! after that), so they do not pile up. So do a deleted key's tombstones
//! ([`tombstone_ttl`]): once pruned the key reads as absent at version 0,
//! which is the value the tombstone stood for, so a commit that read
//! "absent" and passes after the prune built on the same value; one that
//! read the tombstone's version fails its check and runs again.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::super::wire;
use super::state_commit::Committer;
use super::{JetStreamError, JetStreamSettings};
use crate::state::{Remote, RemoteBatch, RemoteFuture, RemoteOutcome};

/// The state stream's name.
pub const STATE_STREAM: &str = "SLUICE_STATE";
/// Its subjects' first token.
pub const STATE_PREFIX: &str = "sluice-state";
/// Marks a deleted key's message.
const H_STATE: &str = "Sluice-State";
/// How long a read or a commit may wait for the server.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// The subject holding `plugin`'s `key`.
pub fn key_subject(plugin: &str, key: &str) -> String {
    format!(
        "{STATE_PREFIX}.k.{}.v{}",
        wire::handler_token(plugin),
        wire::handler_token(key)
    )
}

fn marker_subject(commit: &str) -> String {
    format!("{STATE_PREFIX}.c.{}", wire::handler_token(commit))
}

/// Creates (or checks and updates) the state stream.
pub(super) async fn ensure_state_stream(
    js: &jetstream::Context,
    settings: &JetStreamSettings,
    server_version: &str,
) -> Result<(), JetStreamError> {
    let err = |reason: String| JetStreamError::Stream {
        name: STATE_STREAM.into(),
        reason,
    };
    if !super::schedule::server_supports(server_version) {
        // Not something waiting can heal: the start ends, saying what to do.
        return Err(JetStreamError::Unsupported(format!(
            "plugin state shared by every host ([nats] shared_state, on by default) needs atomic batch publish, nats-server 2.12 or later, and this server is {server_version}: upgrade nats-server, or set [nats] shared_state = false to keep each host's state in its own SQLite"
        )));
    }
    let config = stream::Config {
        name: STATE_STREAM.to_owned(),
        subjects: vec![format!("{STATE_PREFIX}.>")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        allow_direct: true,
        allow_atomic_publish: true,
        allow_message_ttl: true,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let s = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| err(e.to_string()))?;
    let have = &s.cached_info().config;
    if have.max_messages_per_subject != 1
        || !have.allow_direct
        || !have.allow_atomic_publish
        || !have.allow_message_ttl
    {
        js.update_stream(config)
            .await
            .map_err(|e| err(format!("cannot update its settings: {e}")))?;
    }
    Ok(())
}

/// The state stream as the ledger's [`Remote`].
pub struct SharedState {
    client: async_nats::Client,
    committer: Arc<Committer>,
    /// How long the server keeps a commit marker (`None`: forever).
    marker_ttl: Option<Duration>,
    /// How long it keeps a deleted key's tombstone.
    tombstone_ttl: Duration,
}

impl SharedState {
    /// State through `client`'s server (the stream must exist), with the
    /// work stream's `max_age` (see [`marker_ttl`]).
    pub fn new(client: async_nats::Client, work_max_age: Duration) -> Arc<SharedState> {
        Arc::new(SharedState {
            committer: Committer::new(client.clone()),
            client,
            marker_ttl: marker_ttl(work_max_age),
            tombstone_ttl: tombstone_ttl(work_max_age),
        })
    }

    /// The shared store on a connection of its own, for reading it without
    /// a host (`sluice send`); the state stream must exist.
    pub async fn connect(settings: &JetStreamSettings) -> Result<Arc<SharedState>, JetStreamError> {
        let url = settings.url.clone();
        let fail = |reason: String| JetStreamError::Connect {
            url: url.clone(),
            reason,
        };
        let servers = settings
            .url
            .split(',')
            .map(|s| s.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not a server URL (or a list of them): {e}")))?;
        let client = async_nats::ConnectOptions::new()
            .name("sluice")
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(|e| fail(e.to_string()))?;
        jetstream::new(client.clone())
            .get_stream(STATE_STREAM)
            .await
            .map_err(|e| JetStreamError::Stream {
                name: STATE_STREAM.into(),
                reason: format!(
                    "{e} (no host with [nats] shared_state has run on this server yet?)"
                ),
            })?;
        Ok(SharedState::new(client, settings.max_age))
    }
}

/// How long a commit marker is kept: twice the work stream's `max_age`, as
/// the server has it (`mod.rs::connect` reads it; `None`, forever, when it
/// keeps messages forever). A marker only
/// matters to a delivery of its job that comes after the commit, and every
/// such delivery comes from a message of the work stream stored no later
/// than the job's last run (the message itself, or a copy a host made while
/// or before running it: a not-yet-due copy, a retry, a continuation of an
/// earlier slice), which the stream drops `max_age` after it was stored. A
/// run lasts far less than `max_age` (calls and commits are bounded by
/// seconds to minutes; the ack wait hands a silent one on), so by twice
/// that no message that could bring the job back is left, and a pruned
/// marker cannot let it commit a second time.
pub fn marker_ttl(work_max_age: Duration) -> Option<Duration> {
    (!work_max_age.is_zero()).then(|| work_max_age.saturating_mul(2))
}

/// How long a deleted key's tombstone is kept: as long as a marker, or
/// [`TOMBSTONE_TTL`] when markers are kept forever. Any time would do (a
/// pruned tombstone reads as the same value, see the module docs); this
/// keeps deleted keys from piling up in the stream.
pub fn tombstone_ttl(work_max_age: Duration) -> Duration {
    marker_ttl(work_max_age).unwrap_or(TOMBSTONE_TTL)
}

/// A tombstone's life when the work stream keeps messages forever.
const TOMBSTONE_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// The last message on `subject`.
async fn last(
    client: &async_nats::Client,
    subject: &str,
) -> Result<Option<async_nats::Message>, String> {
    let api = format!("$JS.API.DIRECT.GET.{STATE_STREAM}");
    let body = serde_json::json!({ "last_by_subj": subject }).to_string();
    let reply = tokio::time::timeout(TIMEOUT, client.request(api, body.into()))
        .await
        .map_err(|_| format!("no answer reading {subject} in {TIMEOUT:?}"))?
        .map_err(|e| format!("reading {subject}: {e}"))?;
    match reply.status {
        None => Ok(Some(reply)),
        Some(s) if s.as_u16() < 300 => Ok(Some(reply)),
        Some(s) if s.as_u16() == 404 => Ok(None),
        Some(s) => Err(format!(
            "reading {subject}: {} {}",
            s.as_u16(),
            reply.description.unwrap_or_default()
        )),
    }
}

fn sequence(m: &async_nats::Message, subject: &str) -> Result<i64, String> {
    header(m, "Nats-Sequence")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("reading {subject}: no Nats-Sequence"))
}

/// The stream sequence of `subject`'s last message (0: none).
pub(super) async fn last_version(
    client: &async_nats::Client,
    subject: &str,
) -> Result<i64, String> {
    match last(client, subject).await? {
        Some(m) => sequence(&m, subject),
        None => Ok(0),
    }
}

fn header<'a>(m: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// The body of commit `name`'s marker, if the store holds one.
pub(super) async fn marker_body(
    client: &async_nats::Client,
    name: &str,
) -> Result<Option<Vec<u8>>, String> {
    Ok(last(client, &marker_subject(name))
        .await?
        .map(|m| m.payload.to_vec()))
}

impl Remote for SharedState {
    fn get<'a>(
        &'a self,
        plugin: &'a str,
        key: &'a str,
    ) -> RemoteFuture<'a, (Option<Vec<u8>>, i64)> {
        Box::pin(async move {
            let subject = key_subject(plugin, key);
            let Some(m) = last(&self.client, &subject).await? else {
                return Ok((None, 0));
            };
            let version = sequence(&m, &subject)?;
            if header(&m, H_STATE) == Some("deleted") {
                return Ok((None, version));
            }
            Ok((Some(m.payload.to_vec()), version))
        })
    }

    fn submit(&self, batch: RemoteBatch) -> RemoteFuture<'static, RemoteOutcome> {
        let plugin = batch.plugin.clone();
        let marker = marker_subject(&batch.job);
        self.committer.submit(
            batch,
            |key| key_subject(&plugin, key),
            (marker, self.marker_ttl),
            ((H_STATE, "deleted"), self.tombstone_ttl),
        )
    }

    fn check<'a>(&'a self, plugin: &'a str, reads: Vec<(String, i64)>) -> RemoteFuture<'a, bool> {
        Box::pin(async move {
            let checks = reads.into_iter().map(|(key, seen)| async move {
                let want = if seen < 0 {
                    match self.committer.settled(seen).await {
                        Some(version) => version,
                        None => return Ok(false),
                    }
                } else {
                    seen
                };
                Ok::<_, String>(
                    last_version(&self.client, &key_subject(plugin, &key)).await? == want,
                )
            });
            for current in futures_util::future::join_all(checks).await {
                if !current? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn marker<'a>(&'a self, job: &'a str) -> RemoteFuture<'a, Option<Vec<u8>>> {
        Box::pin(marker_body(&self.client, job))
    }
}

/// Looks at the whole state stream, for `sluice bench` (which starts each
/// shared run from an empty store and checks what it left).
/// An error of the shared state stream.
fn state_stream_error(reason: String) -> JetStreamError {
    JetStreamError::Stream {
        name: STATE_STREAM.into(),
        reason,
    }
}

impl super::JetStream {
    /// The shared state stream (the bench's reads and purges go through it).
    async fn state_stream(&self) -> Result<async_nats::jetstream::stream::Stream, JetStreamError> {
        self.inner
            .js
            .get_stream(STATE_STREAM)
            .await
            .map_err(|e| state_stream_error(e.to_string()))
    }

    /// How many keys of `plugin` the shared store holds (a deleted key's
    /// tombstone counts).
    pub async fn shared_keys(&self, plugin: &str) -> Result<usize, JetStreamError> {
        use futures_util::TryStreamExt as _;
        let err = state_stream_error;
        let stream = self.state_stream().await?;
        let filter = format!("{STATE_PREFIX}.k.{}.*", wire::handler_token(plugin));
        let subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| err(e.to_string()))?;
        subjects
            .try_fold(0, |n, _| async move { Ok(n + 1) })
            .await
            .map_err(|e| err(e.to_string()))
    }

    /// Removes every key of `plugin` from the shared store (markers stay:
    /// `sluice bench`, on a server of its own, starts each run from none).
    pub async fn purge_shared_keys(&self, plugin: &str) -> Result<(), JetStreamError> {
        let err = state_stream_error;
        let stream = self.state_stream().await?;
        stream
            .purge()
            .filter(format!(
                "{STATE_PREFIX}.k.{}.*",
                wire::handler_token(plugin)
            ))
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}
