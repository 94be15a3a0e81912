//! State kept by a store every host shares (on JetStream: the
//! `SLUICE_STATE` stream, `transport/jetstream/state.rs`) instead of this
//! host's SQLite: `[nats] shared_state = true`.
//!
//! The ledger works as on one host (turns per key, values in memory), with
//! two differences, both because the shared store, not this host, decides
//! a commit:
//! - **A commit is one atomic batch**, checked by the store: each key the
//!   call changed is written with the version it was read at as the
//!   expected version, each key it only read is checked at that version
//!   without being written (so two calls that only read a key never
//!   conflict over it, as on one host), plus the job's commit marker,
//!   which must not exist yet. All of it is stored, or nothing.
//! - **Versions are the store's** (stream sequences), known only once the
//!   store answered. Turns are still given up at hand-over, as on one
//!   host: each change gets a pending version, a *ticket* (negative,
//!   unique on this host), and the next call on the key reads the pending
//!   value at that ticket. Its commit then expects "whatever version the
//!   ticket's write gets": the committer (`transport/jetstream/
//!   state_commit.rs`) puts it in the same atomic batch right after its
//!   predecessor (stored together or not at all) or, when the predecessor
//!   went in an earlier batch, expects the version that batch gave the key;
//!   a predecessor not stored refuses it. So a hot key on one host is a
//!   chain of calls, many per round trip, as it is on SQLite. When the
//!   answer arrives the ticket becomes the store's version (a call that
//!   read the ticket meanwhile is matched by the entry's alias); a refused
//!   or unanswered commit makes its keys `Unknown` (read from the store
//!   next), unless a later change on this host is already on top.
//! - Across hosts a stale value (another host wrote the key) fails the
//!   batch, the keys become `Unknown` and the call runs again holding its
//!   keys, as after any conflict.
//!
//! A batch the store refused because the job's marker exists means the job
//! committed already (on this host or another, e.g. before a crash): the
//! caller takes the job's outcome and posts from the marker instead.
//!
//! **A failure is checked too.** The ledger's values are a cache another
//! host may have made stale, and a call that fails (a trap, an error, an
//! add that cannot add) commits nothing the store could check. So before
//! such a failure is recorded, [`Session::check_reads`] asks the store
//! whether every key it read is still at the version read (a pending
//! write of this host is waited for); if one is not, the keys become
//! `Unknown` and the call runs again, as after a conflict.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use super::table::{Slot, Turn};
use std::sync::Arc;

use super::{CallState, HandOff, Session, int};

/// What a [`Remote`] call returns.
pub type RemoteFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A state store shared by every host.
pub trait Remote: Send + Sync {
    /// The latest committed value of `plugin`'s `key` (`None`: absent or
    /// deleted) and its version (0: never written).
    fn get<'a>(&'a self, plugin: &'a str, key: &'a str)
    -> RemoteFuture<'a, (Option<Vec<u8>>, i64)>;
    /// Queues `batch`, at once (commits are stored in the order they were
    /// submitted), to be stored atomically if every expectation holds and
    /// the job's marker does not exist; the future says what became of it.
    fn submit(&self, batch: RemoteBatch) -> RemoteFuture<'static, RemoteOutcome>;
    /// The marker of the commit `job` (see [`RemoteBatch::job`]), if any.
    fn marker<'a>(&'a self, job: &'a str) -> RemoteFuture<'a, Option<Vec<u8>>>;
    /// Whether each of `plugin`'s keys is at the version given (0: absent;
    /// negative: the version the write holding that ticket gets, waited
    /// for; not stored: false).
    fn check<'a>(&'a self, plugin: &'a str, reads: Vec<(String, i64)>) -> RemoteFuture<'a, bool>;
}

/// One call's state commit for a [`Remote`] store.
#[derive(Debug, Clone)]
pub struct RemoteBatch {
    /// Whose state.
    pub plugin: String,
    /// In key order.
    pub changes: Vec<RemoteChange>,
    /// The keys the call only read, in key order: checked, not written.
    pub reads: Vec<RemoteRead>,
    /// Names the commit: one per (job, slice), the same on every host.
    pub job: String,
    /// The marker's body: what the job's outcome and posts are.
    pub marker: Vec<u8>,
}

/// One key of a [`RemoteBatch`].
#[derive(Debug, Clone)]
pub struct RemoteChange {
    /// The key.
    pub key: String,
    /// The new value (`None`: delete).
    pub value: Option<Vec<u8>>,
    /// The version the key must be at (0: absent; negative: the version
    /// the write holding that ticket gets); `None`: any (a blind write).
    pub expect: Option<i64>,
    /// This write's pending version until the store answers (negative,
    /// unique on this host).
    pub ticket: i64,
}

/// A key a [`RemoteBatch`] only read: the batch is stored only if the key
/// is still at `version` (0: absent; negative: the version the write
/// holding that ticket gets), and the key is not written.
#[derive(Debug, Clone)]
pub struct RemoteRead {
    /// The key.
    pub key: String,
    /// The version read.
    pub version: i64,
}

/// The store's answer to a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// Stored; the version of each change, in order.
    Committed(Vec<i64>),
    /// Refused: an expected version did not hold, or the marker exists.
    Refused,
    /// It can never be stored (too many keys, a value too large for the
    /// store's messages): retrying cannot help.
    Invalid(String),
    /// The store refused it for a reason of its own (its storage is full,
    /// an API error), or it never reached the store: nothing of it was
    /// stored, and the same commit may pass later.
    Unavailable(String),
}

/// What a remote commit came to.
#[derive(Debug)]
pub enum RemoteCommitted {
    /// This call's batch was stored.
    Stored,
    /// The job was committed before (the marker's body).
    Already(Vec<u8>),
}

impl Session {
    /// Commits the call's state with its marker to the shared store (see
    /// the module docs). Its turns are given up as soon as the commit is
    /// queued; the ledger's view is settled with the store's answer even if
    /// this future is dropped meanwhile.
    pub async fn commit_remote(
        &self,
        state: &CallState,
        job: &str,
        marker: Vec<u8>,
    ) -> Result<RemoteCommitted, HandOff> {
        let Some(remote) = self.inner.remote.clone() else {
            return Err(HandOff::Remote("no shared state store".into()));
        };
        let (answer, tickets, reads) = loop {
            for key in state.adds.keys() {
                self.ensure_known(key).await?;
            }
            match self.submit(remote.as_ref(), state, job, &marker) {
                Ok(Some(submitted)) => break submitted,
                Ok(None) => {}
                Err(NotSubmitted::Wait(keys)) => self.acquire(&keys).await,
                Err(NotSubmitted::HandOff(handoff)) => return Err(handoff),
                Err(NotSubmitted::BadAdd {
                    key,
                    version,
                    reason,
                }) => {
                    // Decided on the ledger's value: invalid only if the
                    // store still holds it.
                    let reads = vec![(key.clone(), version)];
                    let current = remote
                        .check(&self.plugin, reads)
                        .await
                        .map_err(HandOff::Remote)?;
                    if current {
                        return Err(HandOff::Invalid(reason));
                    }
                    self.forget(&key, version);
                }
            }
        };
        let inner = Arc::clone(&self.inner);
        let plugin = self.plugin.clone();
        let settled = tokio::spawn(async move {
            let answer = answer.await;
            let mut table = inner.lock();
            for (i, (key, ticket)) in tickets.iter().enumerate() {
                let version = match &answer {
                    Ok(RemoteOutcome::Committed(versions)) => versions.get(i).copied(),
                    _ => None,
                };
                table.resolve(&plugin, key, *ticket, version);
            }
            table.evict(inner.budget);
            answer
        });
        let answer = settled
            .await
            .map_err(|e| HandOff::Remote(format!("the state commit's task ended: {e}")))?;
        match answer {
            Ok(RemoteOutcome::Committed(_)) => Ok(RemoteCommitted::Stored),
            // Refused, so this batch stored nothing: a marker that
            // cannot be read is looked for again when the job runs again.
            Ok(RemoteOutcome::Refused) => match remote.marker(job).await {
                Ok(Some(body)) => Ok(RemoteCommitted::Already(body)),
                Ok(None) => {
                    // A key only read may be the stale one: it has no
                    // write whose refusal made it unknown.
                    for read in &reads {
                        self.forget(&read.key, read.version);
                    }
                    Err(self.conflict(state))
                }
                Err(e) => Err(HandOff::Unavailable(e)),
            },
            Ok(RemoteOutcome::Invalid(reason)) => Err(HandOff::Invalid(reason)),
            Ok(RemoteOutcome::Unavailable(reason)) => Err(HandOff::Unavailable(reason)),
            Err(e) => Err(HandOff::Remote(e)),
        }
    }

    /// Before a failed call is recorded: `Ok` when every key it read is
    /// still at the version it read in the shared store (or there is none:
    /// one host's SQLite is never stale); else, the keys made `Unknown`,
    /// a conflict (the call runs again on fresh values). See the module
    /// docs.
    pub async fn check_reads(&self, state: &CallState) -> Result<(), HandOff> {
        let Some(remote) = self.inner.remote.clone() else {
            return Ok(());
        };
        if state.reads.is_empty() {
            return Ok(());
        }
        let reads: Vec<(String, i64)> = {
            let table = self.inner.lock();
            state
                .reads
                .iter()
                .map(|(key, seen)| match table.alias(&self.plugin, key) {
                    Some((ticket, stored)) if ticket == *seen => (key.clone(), stored),
                    _ => (key.clone(), *seen),
                })
                .collect()
        };
        let current = remote
            .check(&self.plugin, reads.clone())
            .await
            .map_err(HandOff::Remote)?;
        if current {
            return Ok(());
        }
        for (key, seen) in &state.reads {
            self.forget(key, *seen);
        }
        for (key, stored) in &reads {
            self.forget(key, *stored);
        }
        Err(self.conflict(state))
    }

    /// Makes `key` `Unknown` (read from the store next) if the ledger
    /// still shows it at `version`: a value found stale.
    fn forget(&self, key: &str, version: i64) {
        let mut table = self.inner.lock();
        let at = matches!(
            table.entry(&self.plugin, key).map(|e| &e.slot),
            Some(Slot::Known { version: v, .. }) if *v == version
        );
        if at {
            table.set_slot(&self.plugin, key, Slot::Unknown);
        }
    }

    /// Under the lock: builds the batch and submits it, taking the turn of
    /// every key in it, then shows its writes at their tickets and gives up
    /// every turn; `Ok(None)`: load again.
    fn submit(
        &self,
        remote: &dyn Remote,
        state: &CallState,
        job: &str,
        marker: &[u8],
    ) -> Result<Submitted, NotSubmitted> {
        let mut table = self.inner.lock();
        self.check_turns(&table, state).map_err(|e| match e {
            Ok(keys) => NotSubmitted::Wait(keys),
            Err(handoff) => NotSubmitted::HandOff(handoff),
        })?;
        let keys: BTreeSet<&String> = state.keys();
        let mut changes = Vec::with_capacity(keys.len());
        let mut reads = Vec::new();
        for key in keys {
            let known = match table.entry(&self.plugin, key).map(|e| &e.slot) {
                Some(Slot::Known { value, version, .. }) => Some((value.clone(), *version)),
                _ => None,
            };
            // A read of a pending write that has been stored since is a
            // read of the stored version.
            let read = match (
                state.reads.get(key).copied(),
                table.alias(&self.plugin, key),
            ) {
                (Some(seen), Some((ticket, stored))) if seen == ticket => Some(stored),
                (read, _) => read,
            };
            if let (Some(seen), Some((_, version))) = (read, &known)
                && seen != *version
            {
                return Err(NotSubmitted::HandOff(self.conflict(state)));
            }
            let change = if let Some(value) = state.writes.get(key) {
                RemoteChange {
                    key: key.clone(),
                    value: value.clone(),
                    expect: read,
                    ticket: self.inner.next_ticket(),
                }
            } else if let Some(delta) = state.adds.get(key) {
                let Some((value, version)) = known else {
                    return Ok(None);
                };
                let Some(sum) = int::add(value.as_deref(), *delta) else {
                    return Err(NotSubmitted::BadAdd {
                        key: key.clone(),
                        version,
                        reason: format!(
                            "state-add on key {key:?}: its value is not an integer, or adding {delta} overflows"
                        ),
                    });
                };
                RemoteChange {
                    key: key.clone(),
                    value: Some(sum),
                    expect: Some(version),
                    ticket: self.inner.next_ticket(),
                }
            } else {
                // Only read: checked by the store at the version read, not
                // written (no new version, so other calls that read it do
                // not conflict with this one), and the ledger's view of it
                // stays as it is.
                let Some(version) = read else {
                    return Err(NotSubmitted::HandOff(self.conflict(state)));
                };
                reads.push(RemoteRead {
                    key: key.clone(),
                    version,
                });
                continue;
            };
            changes.push(change);
        }
        let touched = changes
            .iter()
            .map(|c| &c.key)
            .chain(reads.iter().map(|r| &r.key));
        for key in touched {
            if !matches!(table.take(self.id, &self.plugin, key, false), Turn::Held) {
                return Err(NotSubmitted::HandOff(self.conflict(state)));
            }
        }
        let tickets: Vec<(String, i64)> =
            changes.iter().map(|c| (c.key.clone(), c.ticket)).collect();
        let views: Vec<(String, Option<Vec<u8>>, i64)> = changes
            .iter()
            .map(|c| (c.key.clone(), c.value.clone(), c.ticket))
            .collect();
        let answer = remote.submit(RemoteBatch {
            plugin: self.plugin.clone(),
            changes,
            reads: reads.clone(),
            job: job.to_owned(),
            marker: marker.to_vec(),
        });
        for (key, value, ticket) in views {
            table.set_slot(
                &self.plugin,
                &key,
                Slot::Known {
                    value,
                    version: ticket,
                    committed: false,
                },
            );
        }
        let held = table.held_keys(self.id);
        table.release(self.id, &held);
        Ok(Some((answer, tickets, reads)))
    }
}

/// A submitted commit: the store's answer to come, each changed key's
/// ticket, and the keys only read.
type Submitted = Option<(
    RemoteFuture<'static, RemoteOutcome>,
    Vec<(String, i64)>,
    Vec<RemoteRead>,
)>;

/// Why [`Session::submit`] submitted nothing.
enum NotSubmitted {
    /// Other calls hold these keys: take their turns (in order) first.
    Wait(Vec<String>),
    /// It cannot commit.
    HandOff(HandOff),
    /// An add met a value it cannot add to, as the ledger shows `key` at
    /// `version`: invalid only if the store holds that version still.
    BadAdd {
        key: String,
        version: i64,
        reason: String,
    },
}
