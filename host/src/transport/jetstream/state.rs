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
//!   key with `Nats-Expected-Last-Subject-Sequence` (its version when read;
//!   0: absent), and last the job's marker `sluice-state.c.<commit name>`
//!   expected absent. The server stores all of it or nothing; a stale read
//!   or a second commit of the same job (from any host, at any time) is
//!   refused with "wrong last sequence". The messages of a batch get
//!   consecutive sequences, the marker last, so the commit's answer gives
//!   every key's new version.
//!
//! The stream keeps state forever (`max_age` 0); markers are kept too (one
//! small message per committed job that touched state).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};

use super::super::wire;
use super::{JetStreamError, JetStreamSettings};
use crate::state::{Remote, RemoteBatch, RemoteFuture, RemoteOutcome};

/// The state stream's name.
pub const STATE_STREAM: &str = "SLUICE_STATE";
/// Its subjects' first token.
pub const STATE_PREFIX: &str = "sluice-state";
/// Marks a deleted key's message.
const H_STATE: &str = "Sluice-State";
/// The most messages the server takes in one atomic batch (its default).
const MAX_BATCH: usize = 1000;
/// How long a read or a commit may wait for the server.
const TIMEOUT: Duration = Duration::from_secs(10);

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
        return Err(err(format!(
            "[nats] shared_state needs atomic batch publish (nats-server 2.12 or later); this server is {server_version}"
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
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let s = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| err(e.to_string()))?;
    let have = &s.cached_info().config;
    if have.max_messages_per_subject != 1 || !have.allow_direct || !have.allow_atomic_publish {
        js.update_stream(config)
            .await
            .map_err(|e| err(format!("cannot update its settings: {e}")))?;
    }
    Ok(())
}

/// The state stream as the ledger's [`Remote`].
pub struct SharedState {
    client: async_nats::Client,
}

impl SharedState {
    /// State through `client`'s server (the stream must exist).
    pub fn new(client: async_nats::Client) -> Arc<SharedState> {
        Arc::new(SharedState { client })
    }

    /// The last message on `subject`: its sequence, body and headers.
    async fn last(&self, subject: &str) -> Result<Option<async_nats::Message>, String> {
        let api = format!("$JS.API.DIRECT.GET.{STATE_STREAM}");
        let body = serde_json::json!({ "last_by_subj": subject }).to_string();
        let reply = tokio::time::timeout(TIMEOUT, self.client.request(api, body.into()))
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

    async fn commit_batch(&self, batch: RemoteBatch) -> Result<RemoteOutcome, String> {
        let n = batch.changes.len() + 1;
        if n > MAX_BATCH {
            return Ok(RemoteOutcome::Invalid(format!(
                "a call with shared state may change at most {} keys, not {}",
                MAX_BATCH - 1,
                n - 1
            )));
        }
        let max = self.client.max_payload();
        let id = format!(
            "{}-{}",
            batch.job.get(..16).unwrap_or(&batch.job),
            crate::message::new_id()
        );
        let mut messages = Vec::with_capacity(n);
        for change in &batch.changes {
            let subject = key_subject(&batch.plugin, &change.key);
            let mut h = HeaderMap::new();
            if let Some(expect) = change.expect {
                wire::append(
                    &mut h,
                    "Nats-Expected-Last-Subject-Sequence",
                    &expect.to_string(),
                )
                .map_err(|e| e.to_string())?;
            }
            if change.value.is_none() {
                wire::append(&mut h, H_STATE, "deleted").map_err(|e| e.to_string())?;
            }
            let body = change.value.clone().unwrap_or_default();
            messages.push((subject, h, body));
        }
        let mut h = HeaderMap::new();
        wire::append(&mut h, "Nats-Expected-Last-Subject-Sequence", "0")
            .map_err(|e| e.to_string())?;
        messages.push((marker_subject(&batch.job), h, batch.marker));
        for (i, (subject, h, body)) in messages.iter_mut().enumerate() {
            wire::append(h, "Nats-Batch-Id", &id).map_err(|e| e.to_string())?;
            wire::append(h, "Nats-Batch-Sequence", &(i + 1).to_string())
                .map_err(|e| e.to_string())?;
            if i + 1 == n {
                wire::append(h, "Nats-Batch-Commit", "1").map_err(|e| e.to_string())?;
            }
            if let Err(e) = wire::check_size(h, body.len(), max) {
                return Ok(RemoteOutcome::Invalid(format!(
                    "a shared state commit message for {subject} is too large: {e}"
                )));
            }
        }
        let mut messages = messages.into_iter();
        let last = messages.next_back();
        for (subject, h, body) in messages {
            self.client
                .publish_with_headers(subject.clone(), h, body.into())
                .await
                .map_err(|e| format!("publishing to {subject}: {e}"))?;
        }
        let Some((subject, h, body)) = last else {
            return Err("an empty batch".into());
        };
        let reply = tokio::time::timeout(
            TIMEOUT,
            self.client
                .request_with_headers(subject.clone(), h, body.into()),
        )
        .await
        .map_err(|_| format!("no answer to a state commit in {TIMEOUT:?}"))?
        .map_err(|e| format!("committing state ({subject}): {e}"))?;
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("unreadable answer to a state commit: {e}"))?;
        if let Some(error) = ack.get("error") {
            if error.get("err_code").and_then(serde_json::Value::as_u64) == Some(10071) {
                return Ok(RemoteOutcome::Refused);
            }
            return Err(format!("state commit refused: {error}"));
        }
        let seq = ack
            .get("seq")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| format!("a state commit answer without seq: {ack}"))?;
        let count = ack.get("count").and_then(serde_json::Value::as_i64);
        if count != Some(n as i64) {
            return Err(format!("a state commit of {n} messages stored {count:?}"));
        }
        let first = seq - (n as i64 - 1);
        Ok(RemoteOutcome::Committed(
            (0..n as i64 - 1).map(|i| first + i).collect(),
        ))
    }
}

fn header<'a>(m: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

impl Remote for SharedState {
    fn get<'a>(
        &'a self,
        plugin: &'a str,
        key: &'a str,
    ) -> RemoteFuture<'a, (Option<Vec<u8>>, i64)> {
        Box::pin(async move {
            let subject = key_subject(plugin, key);
            let Some(m) = self.last(&subject).await? else {
                return Ok((None, 0));
            };
            let version = header(&m, "Nats-Sequence")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("reading {subject}: no Nats-Sequence"))?;
            if header(&m, H_STATE) == Some("deleted") {
                return Ok((None, version));
            }
            Ok((Some(m.payload.to_vec()), version))
        })
    }

    fn commit(&self, batch: RemoteBatch) -> RemoteFuture<'_, RemoteOutcome> {
        Box::pin(self.commit_batch(batch))
    }

    fn marker<'a>(&'a self, job: &'a str) -> RemoteFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            Ok(self
                .last(&marker_subject(job))
                .await?
                .map(|m| m.payload.to_vec()))
        })
    }
}
