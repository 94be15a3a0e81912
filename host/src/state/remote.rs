//! State kept by a store every host shares (on JetStream: the
//! `SLUICE_STATE` stream, `transport/jetstream/state.rs`) instead of this
//! host's SQLite: `[nats] shared_state = true`.
//!
//! The ledger works as on one host (turns per key, values in memory), with
//! two differences, both because the shared store, not this host, decides
//! a commit:
//! - **A commit is one atomic batch**, checked by the store: each key the
//!   call touched is written with the version it was read at as the
//!   expected version (a key only read is written back unchanged, so its
//!   read is checked too), plus the job's commit marker, which must not
//!   exist yet. All of it is stored, or nothing.
//! - **Turns are held until the store answered**, not only until the commit
//!   is handed over: the versions are the store's (stream sequences), known
//!   only then. So a hot key on one host is a queue of commits, one round
//!   trip each; across hosts a stale value (another host wrote the key)
//!   fails the batch, the keys become `Unknown` (read from the store next)
//!   and the call runs again holding its keys, as after any conflict.
//!
//! A batch the store refused because the job's marker exists means the job
//! committed already (on this host or another, e.g. before a crash): the
//! caller takes the job's outcome and posts from the marker instead.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use super::table::{Slot, Turn};
use super::{CallState, HandOff, Session, int};

/// What a [`Remote`] call returns.
pub type RemoteFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A state store shared by every host.
pub trait Remote: Send + Sync {
    /// The latest committed value of `plugin`'s `key` (`None`: absent or
    /// deleted) and its version (0: never written).
    fn get<'a>(&'a self, plugin: &'a str, key: &'a str)
    -> RemoteFuture<'a, (Option<Vec<u8>>, i64)>;
    /// Stores `batch` atomically if every expectation holds and the job's
    /// marker does not exist.
    fn commit(&self, batch: RemoteBatch) -> RemoteFuture<'_, RemoteOutcome>;
    /// The marker of the commit `job` (see [`RemoteBatch::job`]), if any.
    fn marker<'a>(&'a self, job: &'a str) -> RemoteFuture<'a, Option<Vec<u8>>>;
}

/// One call's state commit for a [`Remote`] store.
#[derive(Debug, Clone)]
pub struct RemoteBatch {
    /// Whose state.
    pub plugin: String,
    /// In key order.
    pub changes: Vec<RemoteChange>,
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
    /// The version the key must be at (0: absent); `None`: any (a blind
    /// write).
    pub expect: Option<i64>,
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
    /// the module docs), then gives up every turn.
    pub async fn commit_remote(
        &self,
        state: &CallState,
        job: &str,
        marker: Vec<u8>,
    ) -> Result<RemoteCommitted, HandOff> {
        let Some(remote) = self.inner.remote.clone() else {
            return Err(HandOff::Remote("no shared state store".into()));
        };
        let batch = loop {
            for key in state.adds.keys() {
                self.ensure_known(key).await?;
            }
            match self.batch(state, job, &marker) {
                Ok(Some(batch)) => break batch,
                Ok(None) => {}
                Err(Ok(keys)) => self.acquire(&keys).await,
                Err(Err(handoff)) => return Err(handoff),
            }
        };
        let keys: Vec<String> = batch.changes.iter().map(|c| c.key.clone()).collect();
        let answer = remote.commit(batch.clone()).await;
        {
            let mut table = self.inner.lock();
            match &answer {
                Ok(RemoteOutcome::Committed(versions)) => {
                    for (change, version) in batch.changes.iter().zip(versions) {
                        table.set_slot(
                            &self.plugin,
                            &change.key,
                            Slot::Known {
                                value: change.value.clone(),
                                version: *version,
                                committed: true,
                            },
                        );
                    }
                }
                Ok(RemoteOutcome::Invalid(_)) => {}
                // Refused, or no answer (it may have been stored): what
                // this host believes of these keys is no longer known.
                _ => {
                    for key in &keys {
                        table.set_slot(&self.plugin, key, Slot::Unknown);
                    }
                }
            }
            let held = table.held_keys(self.id);
            table.release(self.id, &held);
            table.evict(self.inner.budget);
        }
        match answer {
            Ok(RemoteOutcome::Committed(_)) => Ok(RemoteCommitted::Stored),
            Ok(RemoteOutcome::Refused) => {
                match remote.marker(job).await.map_err(HandOff::Remote)? {
                    Some(body) => Ok(RemoteCommitted::Already(body)),
                    None => Err(self.conflict(state)),
                }
            }
            Ok(RemoteOutcome::Invalid(reason)) => Err(HandOff::Invalid(reason)),
            Err(e) => Err(HandOff::Remote(e)),
        }
    }

    /// Under the lock: the batch, or (`Err(Ok(keys))`) turns to wait for
    /// first, or why it cannot commit; `Ok(None)`: load again. Takes the
    /// turn of every key in the batch, so no other call of this host reads
    /// a value the store may be about to change.
    #[allow(clippy::type_complexity)]
    fn batch(
        &self,
        state: &CallState,
        job: &str,
        marker: &[u8],
    ) -> Result<Option<RemoteBatch>, Result<Vec<String>, HandOff>> {
        let mut table = self.inner.lock();
        self.check_turns(&table, state)?;
        let keys: BTreeSet<&String> = state.keys();
        let mut changes = Vec::with_capacity(keys.len());
        for key in keys {
            let known = match table.entry(&self.plugin, key).map(|e| &e.slot) {
                Some(Slot::Known { value, version, .. }) => Some((value.clone(), *version)),
                _ => None,
            };
            let read = state.reads.get(key).copied();
            if let (Some(seen), Some((_, version))) = (read, &known)
                && seen != *version
            {
                return Err(Err(self.conflict(state)));
            }
            let change = if let Some(value) = state.writes.get(key) {
                RemoteChange {
                    key: key.clone(),
                    value: value.clone(),
                    expect: read,
                }
            } else if let Some(delta) = state.adds.get(key) {
                let Some((value, version)) = known else {
                    return Ok(None);
                };
                let Some(sum) = int::add(value.as_deref(), *delta) else {
                    return Err(Err(HandOff::Invalid(format!(
                        "state-add on key {key:?}: its value is not an integer, or adding {delta} overflows"
                    ))));
                };
                RemoteChange {
                    key: key.clone(),
                    value: Some(sum),
                    expect: Some(version),
                }
            } else {
                // Only read: written back unchanged, so the store checks
                // the read. The ledger has the value it showed the call
                // (same version); if it lost it, the call runs again.
                let (Some(seen), Some((value, _))) = (read, known) else {
                    return Err(Err(self.conflict(state)));
                };
                RemoteChange {
                    key: key.clone(),
                    value,
                    expect: Some(seen),
                }
            };
            changes.push(change);
        }
        for change in &changes {
            if !matches!(
                table.take(self.id, &self.plugin, &change.key, false),
                Turn::Held
            ) {
                return Err(Err(self.conflict(state)));
            }
        }
        Ok(Some(RemoteBatch {
            plugin: self.plugin.clone(),
            changes,
            job: job.to_owned(),
            marker: marker.to_vec(),
        }))
    }
}
