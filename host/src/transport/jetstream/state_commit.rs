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
//! messages (with their expected versions), its checks of the keys it only
//! read, then its marker, the last
//! message of the last job carrying the commit. One batch is in flight at
//! a time; commits queue behind it and go together in the next.
//!
//! All or nothing now spans the jobs of a batch, so:
//! - **Two jobs of a batch share a subject only as a chain.** The server
//!   checks a subject's expected version once per batch, against the
//!   stream before the batch (nats-server 2.15.1 refuses a second message
//!   on one subject that carries an expectation, and stores one without).
//!   So a job may follow another on a key in the same batch only when it
//!   built on that job's pending write (the ledger hands a hot key's next
//!   job its predecessor's value before the store answered: its expected
//!   version is the predecessor's ticket, [`Expect::After`]). It then goes
//!   without an expectation: the batch is all or nothing, so it is stored
//!   exactly when the write it read is. Any other job that shares a
//!   subject with the batch waits for the next one.
//! - **A key a job only read is checked, not written**, so jobs that only
//!   read a key never conflict over it (as on one host) and leave no
//!   revision of it. The check is a message on the job's marker subject
//!   with `Nats-Expected-Last-Subject-Sequence` and
//!   `Nats-Expected-Last-Subject-Sequence-Subject` naming the key's subject
//!   ([`Pending::outgoing`]): the server checks it against the stream
//!   before the batch like any expectation, so it is part of the batch's
//!   all or nothing. The server refuses (10164) a check of a subject
//!   written before it in the batch, so a read follows a write of its key
//!   in a batch only as a chain (then unchecked, as above); reads of one
//!   key by several jobs go together, and a later job may write the key
//!   after them (they read the value before it, and come first in the
//!   batch: the order of the batch is a serial order of its jobs).
//! - **A chain across batches is resolved here.** A job whose predecessor
//!   went in an earlier batch expects the version that batch gave the
//!   key; one whose predecessor was refused or got no answer is refused
//!   (its call runs again on the value read from the store).
//! - **A refused batch of several jobs is sorted out**: the server refuses
//!   the whole batch for one stale expectation (or one job committed
//!   before). The committer then reads the version of every key expected
//!   or checked and every marker (direct gets, all at once): a job whose expectation no
//!   longer holds, or whose marker exists, is refused; the others go into
//!   the next batch; a job chained to a refused one is refused with it.
//!   Versions only grow and markers are never removed while
//!   their job can come back (see the pruning notes in `state.rs`), so a
//!   job found stale stays stale: the sorting is final, and a job is put
//!   back at most [`MAX_REQUEUES`] times before it is refused (its call
//!   runs again, as after any conflict).
//! - **No answer** (timeout, a lost connection) fails every job of the
//!   batch as "may have been stored": each delivery comes back and finds
//!   its marker, or runs again.
//! - **A definite no** (the server answered with an error other than a
//!   stale version: its storage is full, a JetStream API error; or the
//!   batch's commit message never left this host) stored nothing: every
//!   job of it is answered [`RemoteOutcome::Unavailable`], and runs again
//!   later without it costing an attempt.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{Notify, oneshot};

use super::super::wire;
use super::state::{TIMEOUT, last_version};
use crate::state::{RemoteBatch, RemoteFuture, RemoteOutcome};

mod job;
use job::{EXPECT, EXPECT_SUBJECT, Expect, Out, Pending, batch_headers, prepare};

/// The most messages the server takes in one atomic batch (its default).
pub(super) const MAX_BATCH: usize = 1000;
/// The most bytes of bodies put in one batch (a bound on what one round
/// trip carries; a single job's commit may exceed it alone).
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Times a job of a refused batch found still valid is put back into the
/// next batch before it is refused itself.
const MAX_REQUEUES: u8 = 3;
/// Pending tickets whose outcome is remembered for chained jobs still to
/// come (a job submitted after its predecessor's answer reached the
/// committer but before the ledger saw it). One forgotten is refused,
/// which is always safe.
const RESOLVED_KEPT: usize = 65_536;

/// The queue and what it knows of pending tickets.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Pending>,
    /// Ticket -> the version its write got (`None`: not stored).
    resolved: HashMap<i64, Option<i64>>,
    /// `resolved`'s tickets, oldest first, for forgetting.
    order: VecDeque<i64>,
    /// Tickets submitted and not answered yet.
    unanswered: HashSet<i64>,
}

impl Queue {
    fn resolve(&mut self, ticket: i64, version: Option<i64>) {
        self.unanswered.remove(&ticket);
        if self.resolved.insert(ticket, version).is_none() {
            self.order.push_back(ticket);
        }
        while self.order.len() > RESOLVED_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.resolved.remove(&old);
            }
        }
    }

    /// Answers `pending` as refused, and its tickets as not stored.
    fn refuse(&mut self, pending: Pending) {
        self.answer(pending, Ok(RemoteOutcome::Refused));
    }

    /// Answers `pending` with something other than a stored commit (its
    /// tickets: not stored; a job chained to one is refused).
    fn answer(&mut self, pending: Pending, outcome: Result<RemoteOutcome, String>) {
        for t in pending.messages.iter().filter_map(|m| m.ticket) {
            self.resolve(t, None);
        }
        let _ = pending.reply.send(outcome);
    }
}

/// What the server made of one atomic batch (an `Err` of [`Committer::publish`]
/// is no answer: it may have been stored).
enum Published {
    /// Stored: the stream sequence of its last message.
    Stored(i64),
    /// Refused for a version or a marker (nothing stored).
    Stale,
    /// Refused for another reason, or never sent whole (nothing stored).
    NotStored(String),
}

/// Batches the state commits of one host (see the module docs).
pub(super) struct Committer {
    client: async_nats::Client,
    queue: Mutex<Queue>,
    /// A flush task is running.
    flushing: AtomicBool,
    /// Told whenever tickets are answered (see [`Committer::settled`]).
    answered: Notify,
}

impl Committer {
    pub(super) fn new(client: async_nats::Client) -> Arc<Committer> {
        Arc::new(Committer {
            client,
            queue: Mutex::new(Queue::default()),
            flushing: AtomicBool::new(false),
            answered: Notify::new(),
        })
    }

    /// The version the write holding pending `ticket` got, once the store
    /// answered it (`None`: not stored, forgotten, or no answer within
    /// three commit timeouts).
    pub(super) async fn settled(&self, ticket: i64) -> Option<i64> {
        let until = tokio::time::Instant::now() + TIMEOUT * 3;
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            {
                let queue = self.queue();
                if let Some(version) = queue.resolved.get(&ticket) {
                    return *version;
                }
                if !queue.unanswered.contains(&ticket) {
                    return None;
                }
            }
            if tokio::time::timeout_at(until, answered).await.is_err() {
                return None;
            }
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still a
        // queue.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `batch` (to go with the others queued meanwhile), at once,
    /// so commits are stored in the order they were submitted; the future
    /// says what became of it.
    pub(super) fn submit(
        self: &Arc<Self>,
        batch: RemoteBatch,
        key_subject: impl Fn(&str) -> String,
        (marker_subject, marker_ttl): (String, Option<Duration>),
        (deleted_header, tombstone_ttl): ((&str, &str), Duration),
    ) -> RemoteFuture<'static, RemoteOutcome> {
        let prepared = prepare(
            batch,
            key_subject,
            (marker_subject, marker_ttl),
            (deleted_header, tombstone_ttl),
            self.client.max_payload(),
        );
        let (pending, reads) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(invalid)) => return Box::pin(std::future::ready(Ok(invalid))),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = self.queue();
            let tickets = pending.iter().filter_map(|m| m.ticket);
            queue.unanswered.extend(tickets);
            queue.jobs.push_back(Pending {
                messages: pending,
                reads,
                reply,
                requeued: 0,
            });
        }
        if !self.flushing.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).flush());
        }
        Box::pin(async move {
            answer
                .await
                .map_err(|_| "the state commit was lost (its batch task ended)".to_owned())?
        })
    }

    /// Commits batches while commits are queued.
    async fn flush(self: Arc<Self>) {
        let _guard = FlushGuard(&self);
        loop {
            let group = self.take_group();
            if group.is_empty() {
                // `take_group` may have refused jobs.
                self.answered.notify_waiters();
                self.flushing.store(false, Ordering::Release);
                // A commit queued after the look and before the store
                // found the flag still set: flush it, unless a new task
                // already does.
                if self.queue().jobs.is_empty() || self.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            self.commit_group(group).await;
            self.answered.notify_waiters();
        }
    }

    /// The next batch's jobs, in queue order: as many as fit, stopping at
    /// one that shares a subject with a job already in it other than as
    /// its chain (module docs). Sets each message's check; refuses a job
    /// chained to a write that was not stored.
    fn take_group(&self) -> Vec<Pending> {
        let mut queue = self.queue();
        let mut group = Vec::new();
        // Subject -> the ticket of the group's last write to it.
        let mut subjects: HashMap<String, Option<i64>> = HashMap::new();
        let (mut count, mut bytes) = (0, 0);
        while let Some(next) = queue.jobs.front() {
            let fits = group.is_empty()
                || (count + next.most_messages() <= MAX_BATCH
                    && bytes + next.bytes() <= MAX_GROUP_BYTES);
            // None: it cannot go in this batch; Some(false): it can never
            // be stored. A read is checked against the stream before the
            // batch, like a write's expectation, so it follows a write of
            // its key in the batch only as a chain (the server refuses a
            // check of a subject written before it in the batch); reads
            // of one key by several jobs go together.
            let mut ok = Some(true);
            let touches = next
                .messages
                .iter()
                .map(|m| (&m.subject, m.expect))
                .chain(next.reads.iter().map(|r| (&r.subject, r.expect)));
            for (subject, expect) in touches {
                let chained =
                    matches!(expect, Expect::After(t) if subjects.get(subject) == Some(&Some(t)));
                let blind = expect == Expect::Nothing;
                if subjects.contains_key(subject) && !chained && !blind {
                    ok = None;
                    break;
                }
                if let Expect::After(t) = expect
                    && !chained
                    && !matches!(queue.resolved.get(&t), Some(Some(_)))
                {
                    // Not stored, forgotten, or (impossible: one batch at
                    // a time, in order) still to come.
                    ok = Some(false);
                }
            }
            if !fits || ok.is_none() {
                break;
            }
            let Some(mut next) = queue.jobs.pop_front() else {
                break;
            };
            if ok == Some(false) {
                queue.refuse(next);
                continue;
            }
            for r in &mut next.reads {
                r.check = check_of(&subjects, &queue.resolved, &r.subject, r.expect);
            }
            for m in &mut next.messages {
                m.check = check_of(&subjects, &queue.resolved, &m.subject, m.expect);
                subjects.insert(m.subject.clone(), m.ticket);
            }
            count += next.outgoing().len();
            bytes += next.bytes();
            group.push(next);
        }
        group
    }

    /// Publishes `group` as one atomic batch and answers its jobs.
    async fn commit_group(&self, group: Vec<Pending>) {
        tracing::trace!(jobs = group.len(), "state batch");
        match self.publish(&group).await {
            Ok(Published::Stored(last)) => {
                let total: usize = group.iter().map(|p| p.outgoing().len()).sum();
                // The sequence before the job's first message; its key
                // messages come first, in order.
                let mut seq = last - total as i64;
                let mut queue = self.queue();
                for pending in group {
                    let mut versions = Vec::with_capacity(pending.messages.len());
                    for (i, m) in pending.messages.iter().enumerate() {
                        if let Some(t) = m.ticket {
                            let version = seq + i as i64 + 1;
                            queue.resolve(t, Some(version));
                            versions.push(version);
                        }
                    }
                    seq += pending.outgoing().len() as i64;
                    let _ = pending.reply.send(Ok(RemoteOutcome::Committed(versions)));
                }
            }
            Ok(Published::Stale) if group.len() == 1 => {
                let mut queue = self.queue();
                for pending in group {
                    queue.refuse(pending);
                }
            }
            Ok(Published::Stale) => self.sort_out(group).await,
            Ok(Published::NotStored(reason)) => {
                tracing::warn!(jobs = group.len(), %reason, "the state store refused a commit; its jobs run again later");
                let mut queue = self.queue();
                for pending in group {
                    queue.answer(pending, Ok(RemoteOutcome::Unavailable(reason.clone())));
                }
            }
            Err(e) => {
                let mut queue = self.queue();
                for pending in group {
                    // It may have been stored; a job chained to it is
                    // refused (its call runs again on the stored value).
                    for t in pending.messages.iter().filter_map(|m| m.ticket) {
                        queue.resolve(t, None);
                    }
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One atomic batch of `group`'s messages, and what the server made
    /// of it; `Err`: no answer (it may have been stored).
    async fn publish(&self, group: &[Pending]) -> Result<Published, String> {
        let not_stored = |e: String| Ok(Published::NotStored(e));
        let id = crate::message::new_id();
        let messages: Vec<Out<'_>> = group.iter().flat_map(Pending::outgoing).collect();
        let total = messages.len();
        let mut last = None;
        for (i, m) in messages.iter().enumerate() {
            let mut headers = m.headers.clone();
            if let Some((subject, v)) = m.check {
                let mut add = || {
                    wire::append(&mut headers, EXPECT, &v.to_string())?;
                    match subject {
                        Some(subject) => wire::append(&mut headers, EXPECT_SUBJECT, subject),
                        None => Ok(()),
                    }
                };
                if let Err(e) = add() {
                    return not_stored(e.to_string());
                }
            }
            let commit = i + 1 == total;
            if let Err(e) = batch_headers(&mut headers, &id, i + 1, commit) {
                return not_stored(e);
            }
            if commit {
                last = Some((m, headers));
                break;
            }
            // A batch whose commit message is never sent is never stored
            // (the server drops an incomplete batch).
            if let Err(e) = self
                .client
                .publish_with_headers(m.subject.to_owned(), headers, m.body.to_vec().into())
                .await
            {
                return not_stored(format!("publishing to {}: {e}", m.subject));
            }
        }
        let Some((m, headers)) = last else {
            return not_stored("an empty state batch".into());
        };
        let reply = tokio::time::timeout(
            TIMEOUT,
            self.client
                .request_with_headers(m.subject.to_owned(), headers, m.body.to_vec().into()),
        )
        .await
        .map_err(|_| format!("no answer to a state commit in {TIMEOUT:?}"))?;
        let reply = match reply {
            Ok(reply) => reply,
            // Nothing listens on the subject (no stream took it), or the
            // client refused to send it.
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::RequestErrorKind::NoResponders
                        | async_nats::RequestErrorKind::InvalidSubject
                        | async_nats::RequestErrorKind::MaxPayloadExceeded
                ) =>
            {
                return not_stored(format!("committing state ({}): {e}", m.subject));
            }
            Err(e) => return Err(format!("committing state ({}): {e}", m.subject)),
        };
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("unreadable answer to a state commit: {e}"))?;
        if let Some(error) = ack.get("error") {
            // 10071: a stale expectation (or the marker exists); 10164:
            // the same on a replicated stream, where another proposal on
            // the subject is in flight (nats-server's batching), or a
            // check of a subject written before it in the batch (which
            // `take_group` never builds; sorted out like the others).
            if matches!(
                error.get("err_code").and_then(serde_json::Value::as_u64),
                Some(10071 | 10164)
            ) {
                return Ok(Published::Stale);
            }
            // An error answer is a refusal: the server stored none of it.
            return not_stored(format!("the state store refused a commit: {error}"));
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
        Ok(Published::Stored(seq))
    }

    /// After a refused batch of several jobs: refuses the jobs that cannot
    /// commit (an expected version moved, the marker exists, or the job it
    /// is chained to is refused) and puts the others back at the head of
    /// the queue, in order.
    async fn sort_out(&self, group: Vec<Pending>) {
        let checks = group.iter().map(|p| async move {
            let expected = p
                .messages
                .iter()
                .filter_map(|m| m.check.map(|want| (&m.subject, want)))
                .chain(
                    p.reads
                        .iter()
                        .filter_map(|r| r.check.map(|want| (&r.subject, want))),
                );
            let reads = expected.map(|(subject, want)| async move {
                (last_version(&self.client, subject).await, want)
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
        let mut verdicts = join_all(checks).await;
        // A chained write stands or falls with the one it follows (an
        // earlier job of the group).
        let mut refused: HashSet<i64> = HashSet::new();
        for (pending, verdict) in group.iter().zip(verdicts.iter_mut()) {
            let chained_to = |expect: Expect, check: Option<i64>| matches!(expect, Expect::After(t) if check.is_none() && refused.contains(&t));
            let follows_refused = pending
                .messages
                .iter()
                .any(|m| chained_to(m.expect, m.check))
                || pending.reads.iter().any(|r| chained_to(r.expect, r.check));
            if follows_refused {
                *verdict = Ok(false);
            }
            if !matches!(verdict, Ok(true)) {
                refused.extend(pending.messages.iter().filter_map(|m| m.ticket));
            }
        }
        let any_stale = verdicts.iter().any(|v| matches!(v, Ok(false)));
        let mut back = Vec::new();
        let mut queue = self.queue();
        for (mut pending, verdict) in group.into_iter().zip(verdicts) {
            match verdict {
                // Nothing found stale (the batch was refused for a reason
                // this cannot see): refuse all rather than loop.
                Ok(true) if any_stale && pending.requeued < MAX_REQUEUES => {
                    pending.requeued += 1;
                    back.push(pending);
                }
                Ok(_) => queue.refuse(pending),
                // The batch was refused, so nothing of it is stored; this
                // job's expectations could not be read: it runs again
                // later.
                Err(e) => queue.answer(
                    pending,
                    Ok(RemoteOutcome::Unavailable(format!(
                        "cannot sort out a refused state batch: {e}"
                    ))),
                ),
            }
        }
        for pending in back.into_iter().rev() {
            queue.jobs.push_front(pending);
        }
    }
}

/// The version the server is to check for a message or read on `subject`
/// expecting `expect`, as it goes into a batch whose writes so far are
/// `subjects` (subject -> the ticket of its last write): `None` for a
/// blind write, or one chained to the batch's last write of the subject
/// (stored exactly when that write is).
fn check_of(
    subjects: &HashMap<String, Option<i64>>,
    resolved: &HashMap<i64, Option<i64>>,
    subject: &str,
    expect: Expect,
) -> Option<i64> {
    match expect {
        Expect::Nothing => None,
        Expect::Version(v) => Some(v),
        Expect::After(t) => match subjects.get(subject) {
            Some(Some(last)) if *last == t => None,
            _ => resolved.get(&t).copied().flatten(),
        },
    }
}

/// Resets the flush flag if the flush task panics (its jobs' answers are
/// dropped with it: each caller sees its commit lost, and the deliveries
/// come back), so later commits start a new one.
struct FlushGuard<'a>(&'a Committer);

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            {
                let mut queue = self.0.queue();
                queue.jobs.clear();
                queue.unanswered.clear();
            }
            self.0.flushing.store(false, Ordering::Release);
            self.0.answered.notify_waiters();
        }
    }
}
