//! Group commit for the shared state stream (`state.rs`): the state
//! commits of this host's concurrent jobs go to the server together, as one
//! ADR-50 atomic batch, instead of one batch per job.
//!
//! Why: on a file-backed stream with one replica the server stages every
//! atomic batch in a store of its own on disk and syncs it (nats-server
//! 2.12 to 2.15), and commits batches one after another: measured with
//! 2.15.1 here, one two-message batch per job tops out near 200 batches a
//! second whatever the concurrency (a plain publish does thousands). That
//! cost is per batch, not per message, so sharing a batch between jobs
//! divides it among them.
//!
//! How: [`Committer::commit`] queues the job's messages and waits; a flush
//! task (started by the first commit that finds none running, ending when
//! the queue is empty) takes everything queued, up to the server's 1000
//! messages per batch, and publishes it as one batch: each job's key
//! messages (with their expected versions) then its marker, the last
//! message of the last job carrying the commit. One batch is in flight at
//! a time; commits queue behind it and go together in the next.
//!
//! All or nothing now spans the jobs of a batch, so:
//! - **No two jobs in a batch touch one subject** (a key, a marker): the
//!   server checks a subject's expected version once per batch, against
//!   the stream before the batch, so a second write of a key in the same
//!   batch would not be checked against the first. A job that shares a
//!   subject with one already in the batch waits for the next one. (The
//!   ledger never hands over two commits on one key at once anyway: it
//!   holds a commit's keys until the store answered.)
//! - **A refused batch of several jobs is sorted out**: the server refuses
//!   the whole batch for one stale expectation (or one job committed
//!   before). The committer then reads every expected key's version and
//!   every marker (direct gets, all at once): a job whose expectation no
//!   longer holds, or whose marker exists, is refused; the others go into
//!   the next batch. Versions only grow and markers are never removed while
//!   their job can come back (see the pruning notes in `state.rs`), so a
//!   job found stale stays stale: the sorting is final, and a job is put
//!   back at most [`MAX_REQUEUES`] times before it is refused (its call
//!   runs again, as after any conflict).
//! - **No answer** (timeout, a lost connection) fails every job of the
//!   batch as "may have been stored": each delivery comes back and finds
//!   its marker, or runs again.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::HeaderMap;
use futures_util::future::join_all;
use tokio::sync::oneshot;

use super::super::wire;
use super::state::{TIMEOUT, last_version};
use crate::state::{RemoteBatch, RemoteOutcome};

/// The most messages the server takes in one atomic batch (its default).
pub(super) const MAX_BATCH: usize = 1000;
/// The most bytes of bodies put in one batch (a bound on what one round
/// trip carries; a single job's commit may exceed it alone).
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Times a job of a refused batch found still valid is put back into the
/// next batch before it is refused itself.
const MAX_REQUEUES: u8 = 3;

/// One message of a commit, before the batch's headers are added.
struct Msg {
    subject: String,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The version it must be at (`None`: unchecked), for sorting out a
    /// refused batch.
    expect: Option<i64>,
}

/// One job's commit, waiting for its batch.
struct Pending {
    /// Key messages, then the marker last.
    messages: Vec<Msg>,
    reply: oneshot::Sender<Result<RemoteOutcome, String>>,
    requeued: u8,
}

impl Pending {
    fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.body.len()).sum()
    }
}

/// Batches the state commits of one host (see the module docs).
pub(super) struct Committer {
    client: async_nats::Client,
    queue: Mutex<VecDeque<Pending>>,
    /// A flush task is running.
    flushing: AtomicBool,
}

impl Committer {
    pub(super) fn new(client: async_nats::Client) -> Arc<Committer> {
        Arc::new(Committer {
            client,
            queue: Mutex::new(VecDeque::new()),
            flushing: AtomicBool::new(false),
        })
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Pending>> {
        // Nothing panics while holding it; a poisoned queue is still a
        // queue.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `batch` (with the others queued meanwhile) and says what
    /// became of it.
    pub(super) async fn commit(
        self: &Arc<Self>,
        batch: RemoteBatch,
        key_subject: impl Fn(&str) -> String,
        (marker_subject, marker_ttl): (String, Option<std::time::Duration>),
        deleted_header: (&str, &str),
    ) -> Result<RemoteOutcome, String> {
        let n = batch.changes.len() + 1;
        if n > MAX_BATCH {
            return Ok(RemoteOutcome::Invalid(format!(
                "a call with shared state may change at most {} keys, not {}",
                MAX_BATCH - 1,
                n - 1
            )));
        }
        let max = self.client.max_payload();
        let mut messages = Vec::with_capacity(n);
        for change in batch.changes {
            let mut headers = HeaderMap::new();
            if let Some(expect) = change.expect {
                wire::append(
                    &mut headers,
                    "Nats-Expected-Last-Subject-Sequence",
                    &expect.to_string(),
                )
                .map_err(|e| e.to_string())?;
            }
            if change.value.is_none() {
                wire::append(&mut headers, deleted_header.0, deleted_header.1)
                    .map_err(|e| e.to_string())?;
            }
            messages.push(Msg {
                subject: key_subject(&change.key),
                headers,
                body: change.value.unwrap_or_default(),
                expect: change.expect,
            });
        }
        let mut headers = HeaderMap::new();
        wire::append(&mut headers, "Nats-Expected-Last-Subject-Sequence", "0")
            .map_err(|e| e.to_string())?;
        if let Some(ttl) = marker_ttl {
            wire::append(
                &mut headers,
                "Nats-TTL",
                &format!("{}s", ttl.as_secs().max(1)),
            )
            .map_err(|e| e.to_string())?;
        }
        messages.push(Msg {
            subject: marker_subject,
            headers,
            body: batch.marker,
            expect: Some(0),
        });
        for m in &messages {
            // With the largest batch headers it can get.
            let mut h = m.headers.clone();
            batch_headers(&mut h, &crate::message::new_id(), MAX_BATCH, true)?;
            if let Err(e) = wire::check_size(&h, m.body.len(), max) {
                return Ok(RemoteOutcome::Invalid(format!(
                    "a shared state commit message for {} is too large: {e}",
                    m.subject
                )));
            }
        }
        let (reply, answer) = oneshot::channel();
        self.queue().push_back(Pending {
            messages,
            reply,
            requeued: 0,
        });
        if !self.flushing.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).flush());
        }
        answer
            .await
            .map_err(|_| "the state commit was lost (its batch task ended)".to_owned())?
    }

    /// Commits batches while commits are queued.
    async fn flush(self: Arc<Self>) {
        let _guard = FlushGuard(&self);
        loop {
            let group = self.take_group();
            if group.is_empty() {
                self.flushing.store(false, Ordering::Release);
                // A commit queued after the look and before the store
                // found the flag still set: flush it, unless a new task
                // already does.
                if self.queue().is_empty() || self.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            self.commit_group(group).await;
        }
    }

    /// The next batch's jobs, in queue order: as many as fit, stopping at
    /// one that shares a subject with a job already in it.
    fn take_group(&self) -> Vec<Pending> {
        let mut queue = self.queue();
        let mut group = Vec::new();
        let mut subjects = BTreeSet::new();
        let (mut count, mut bytes) = (0, 0);
        while let Some(next) = queue.front() {
            if !group.is_empty()
                && (count + next.messages.len() > MAX_BATCH
                    || bytes + next.bytes() > MAX_GROUP_BYTES
                    || next.messages.iter().any(|m| subjects.contains(&m.subject)))
            {
                break;
            }
            let Some(next) = queue.pop_front() else {
                break;
            };
            count += next.messages.len();
            bytes += next.bytes();
            subjects.extend(next.messages.iter().map(|m| m.subject.clone()));
            group.push(next);
        }
        group
    }

    /// Publishes `group` as one atomic batch and answers its jobs.
    async fn commit_group(&self, group: Vec<Pending>) {
        tracing::trace!(jobs = group.len(), "state batch");
        match self.publish(&group).await {
            Ok(Some(last)) => {
                let total: usize = group.iter().map(|p| p.messages.len()).sum();
                let mut seq = last - total as i64;
                for pending in group {
                    let keys = pending.messages.len() - 1;
                    let versions = (1..=keys as i64).map(|i| seq + i).collect();
                    seq += pending.messages.len() as i64;
                    let _ = pending.reply.send(Ok(RemoteOutcome::Committed(versions)));
                }
            }
            Ok(None) if group.len() == 1 => {
                for pending in group {
                    let _ = pending.reply.send(Ok(RemoteOutcome::Refused));
                }
            }
            Ok(None) => self.sort_out(group).await,
            Err(e) => {
                for pending in group {
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One atomic batch of `group`'s messages: the stream sequence of its
    /// last message, or `None` when refused for a version or a marker.
    async fn publish(&self, group: &[Pending]) -> Result<Option<i64>, String> {
        let id = crate::message::new_id();
        let total: usize = group.iter().map(|p| p.messages.len()).sum();
        let mut messages = group.iter().flat_map(|p| &p.messages).enumerate();
        let mut last = None;
        for (i, m) in messages.by_ref() {
            let mut headers = m.headers.clone();
            let commit = i + 1 == total;
            batch_headers(&mut headers, &id, i + 1, commit)?;
            if commit {
                last = Some((m, headers));
                break;
            }
            self.client
                .publish_with_headers(m.subject.clone(), headers, m.body.clone().into())
                .await
                .map_err(|e| format!("publishing to {}: {e}", m.subject))?;
        }
        let Some((m, headers)) = last else {
            return Err("an empty state batch".into());
        };
        let reply = tokio::time::timeout(
            TIMEOUT,
            self.client
                .request_with_headers(m.subject.clone(), headers, m.body.clone().into()),
        )
        .await
        .map_err(|_| format!("no answer to a state commit in {TIMEOUT:?}"))?
        .map_err(|e| format!("committing state ({}): {e}", m.subject))?;
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("unreadable answer to a state commit: {e}"))?;
        if let Some(error) = ack.get("error") {
            if error.get("err_code").and_then(serde_json::Value::as_u64) == Some(10071) {
                return Ok(None);
            }
            return Err(format!("state commit refused: {error}"));
        }
        let seq = ack
            .get("seq")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| format!("a state commit answer without seq: {ack}"))?;
        let count = ack.get("count").and_then(serde_json::Value::as_i64);
        if count != Some(total as i64) {
            return Err(format!(
                "a state commit of {total} messages stored {count:?}"
            ));
        }
        Ok(Some(seq))
    }

    /// After a refused batch of several jobs: refuses the jobs that cannot
    /// commit (an expected version moved, or the marker exists) and puts
    /// the others back at the head of the queue, in order.
    async fn sort_out(&self, group: Vec<Pending>) {
        let checks = group.iter().map(|p| async move {
            let reads = p.messages.iter().filter_map(|m| {
                m.expect
                    .map(|want| async move { (last_version(&self.client, &m.subject).await, want) })
            });
            let mut valid = Ok(true);
            for (now, want) in join_all(reads).await {
                match now {
                    Ok(now) if now == want => {}
                    Ok(_) => valid = valid.map(|_| false),
                    Err(e) => valid = Err(e),
                }
            }
            valid
        });
        let verdicts = join_all(checks).await;
        let any_stale = verdicts.iter().any(|v| matches!(v, Ok(false)));
        let mut back = Vec::new();
        for (mut pending, verdict) in group.into_iter().zip(verdicts) {
            match verdict {
                // Nothing found stale (the batch was refused for a reason
                // this cannot see): refuse all rather than loop.
                Ok(true) if any_stale && pending.requeued < MAX_REQUEUES => {
                    pending.requeued += 1;
                    back.push(pending);
                }
                Ok(_) => {
                    let _ = pending.reply.send(Ok(RemoteOutcome::Refused));
                }
                Err(e) => {
                    let _ = pending.reply.send(Err(e));
                }
            }
        }
        let mut queue = self.queue();
        for pending in back.into_iter().rev() {
            queue.push_front(pending);
        }
    }
}

/// Adds the ADR-50 headers of message `seq` (from 1) of batch `id`.
fn batch_headers(h: &mut HeaderMap, id: &str, seq: usize, commit: bool) -> Result<(), String> {
    wire::append(h, "Nats-Batch-Id", id).map_err(|e| e.to_string())?;
    wire::append(h, "Nats-Batch-Sequence", &seq.to_string()).map_err(|e| e.to_string())?;
    if commit {
        wire::append(h, "Nats-Batch-Commit", "1").map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Resets the flush flag if the flush task panics (its jobs' answers are
/// dropped with it: each caller sees its commit lost, and the deliveries
/// come back), so later commits start a new one.
struct FlushGuard<'a>(&'a Committer);

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.queue().clear();
            self.0.flushing.store(false, Ordering::Release);
        }
    }
}
