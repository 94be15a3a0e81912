//! Per-plugin key-value state in SQLite: reads, and applying a commit's
//! state changes with optimistic concurrency.
//!
//! **Versions never repeat.** Every change gets a version from one counter
//! for the whole database file ([`Store::next_state_version`], seeded from
//! the largest version on disk when the store opens), and a delete keeps
//! the key's row as a tombstone (value NULL) with its new version. So a
//! key's version only grows, across deletes and re-creates, and a version a
//! call read can never come back with another value: no ABA. An absent key
//! that never existed (or whose tombstone was pruned after `retention`)
//! reads as version 0; that is safe because "absent" then means the same
//! value, and the next write to it still gets a version never used before.
//!
//! Who picks a change's version: the state ledger (`crate::state`), when it
//! hands a commit over in order, so that the next job can read that version
//! before the commit is durable. This module checks and applies; it is the
//! authority, the ledger only a fast, checked guess:
//! - every read version must still be the key's version, else the commit is
//!   a conflict and applies nothing;
//! - a put is stored with its version (or a fresh one if it would not be
//!   larger than the key's current version, which only a caller that
//!   ignored the ledger could cause);
//! - an add is applied to the value on disk; if that value's version is not
//!   the one the ledger added to (the ledger's view was ahead of a commit
//!   that failed), the result gets a fresh version so that nobody who read
//!   the ledger's guess can pass a check with it. Such keys are reported
//!   back (`reassigned`) so the ledger drops its guess.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError};
use crate::state::int;

/// A key's value as stored: `None` when absent or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateValue {
    /// The bytes; `None`: absent (never written, or deleted).
    pub value: Option<Vec<u8>>,
    /// The version of that value; 0 for a key that was never written.
    pub version: i64,
}

/// One change a commit makes to one key, with the version it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// Set the value (`Some`) or delete it (`None`, leaving a tombstone).
    Put {
        /// The new value.
        value: Option<Vec<u8>>,
        /// Its version.
        version: i64,
    },
    /// Add `delta` to the decimal integer stored at the key (absent: 0).
    Add {
        /// What to add.
        delta: i64,
        /// The key's version the ledger added it to.
        base: i64,
        /// The version of the sum.
        version: i64,
    },
}

impl StateChange {
    /// The version this change gives its key.
    pub fn version(&self) -> i64 {
        match self {
            StateChange::Put { version, .. } | StateChange::Add { version, .. } => *version,
        }
    }
}

/// A commit's state part: what the call read and what it changes, all in
/// one plugin's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCommit {
    /// The plugin whose state this is.
    pub plugin: String,
    /// Key -> the version the call read (0: absent).
    pub reads: BTreeMap<String, i64>,
    /// Key -> its change.
    pub changes: BTreeMap<String, StateChange>,
}

impl StateCommit {
    /// True when the commit neither read nor changed state.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.changes.is_empty()
    }
}

/// What applying a [`StateCommit`] did.
#[derive(Debug)]
pub(super) enum Applied {
    /// Applied; these keys got another version than the commit carried.
    Done { reassigned: Vec<String> },
    /// A read version changed, or an add met a value that is not an
    /// integer (or overflowed): nothing applied.
    Conflict,
}

impl Store {
    /// Whether `plugin` has a value in this store's state (one index probe;
    /// for the split warning of `cluster/hosts.rs`).
    pub async fn has_state(&self, plugin: &str) -> Result<bool, StoreError> {
        let plugin = plugin.to_owned();
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM state WHERE plugin = ?1 AND value IS NOT NULL)",
                params![plugin],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// The committed value of `key` in `plugin`'s state (read on the
    /// reader thread: it never waits for the writer's commits).
    pub async fn state_get(&self, plugin: &str, key: &str) -> Result<StateValue, StoreError> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.read(move |conn| get(conn, &plugin, &key)).await
    }

    /// The value of `key` as the writer sees it now: including the changes
    /// of operations already applied in the open group transaction, and of
    /// every operation submitted before this one. Answered as soon as it
    /// ran, without waiting for the group's commit.
    pub async fn state_get_latest(
        &self,
        plugin: &str,
        key: &str,
    ) -> Result<StateValue, StoreError> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.writer
            .call_uncommitted(move |conn| get(conn, &plugin, &key))
            .await
    }

    /// A state version no key in this file has had: for a change the
    /// ledger hands over.
    pub fn next_state_version(&self) -> i64 {
        self.versions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1)
    }
}

/// The largest version on disk: where the counter starts.
pub(super) fn max_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(version), 0) FROM state", [], |r| {
            r.get(0)
        })?,
    )
}

pub(super) fn get(conn: &Connection, plugin: &str, key: &str) -> Result<StateValue, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT value, version FROM state WHERE plugin = ?1 AND key = ?2")?;
    Ok(stmt
        .query_row(params![plugin, key], |r| {
            Ok(StateValue {
                value: r.get(0)?,
                version: r.get(1)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Checks the reads and applies the changes of `commit`, or nothing.
pub(super) fn apply(
    conn: &Connection,
    store_versions: &std::sync::atomic::AtomicI64,
    commit: &StateCommit,
    now: i64,
) -> Result<Applied, StoreError> {
    let plugin = commit.plugin.as_str();
    for (key, seen) in &commit.reads {
        if get(conn, plugin, key)?.version != *seen {
            return Ok(Applied::Conflict);
        }
    }
    let fresh = || {
        store_versions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1)
    };
    // Compute every new value first, so an add that cannot apply leaves
    // nothing half-written.
    let mut rows = Vec::with_capacity(commit.changes.len());
    let mut reassigned = Vec::new();
    for (key, change) in &commit.changes {
        let now_value = get(conn, plugin, key)?;
        let (value, version, expected) = match change {
            StateChange::Put { value, version } => (value.clone(), *version, None),
            StateChange::Add {
                delta,
                base,
                version,
            } => {
                let Some(sum) = int::add(now_value.value.as_deref(), *delta) else {
                    return Ok(Applied::Conflict);
                };
                (Some(sum), *version, Some(*base))
            }
        };
        let version =
            if version <= now_value.version || expected.is_some_and(|b| b != now_value.version) {
                reassigned.push(key.clone());
                fresh()
            } else {
                version
            };
        rows.push((key, value, version));
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO state (plugin, key, value, version, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value,
             version = excluded.version, updated_at = excluded.updated_at",
    )?;
    for (key, value, version) in rows {
        upsert.execute(params![plugin, key, value, version, now])?;
    }
    Ok(Applied::Done { reassigned })
}

/// Deletes tombstones older than `before_ms` (see the module docs for why
/// that is safe).
pub(super) fn prune_tombstones(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM state WHERE value IS NULL AND updated_at < ?1",
        params![before_ms],
    )?)
}
