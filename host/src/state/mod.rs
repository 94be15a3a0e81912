//! The state ledger: how handler calls read and commit per-plugin state
//! fast, even when many of them want the same key.
//!
//! The store is the authority on state (`store/state.rs` checks every
//! commit's read versions and applies its changes, or nothing). Going to it
//! for every read is slow, though: its writer answers after an fsync, and
//! 64 concurrent jobs that read one counter all read the same version, so
//! all but one conflict at commit and run again. The ledger sits in front
//! of it, in memory, and does three things:
//!
//! 1. **It answers reads.** It keeps the value of every key it has seen as
//!    it will be once every commit handed over so far is applied. A key it
//!    does not hold is read from the reader thread (committed data, no
//!    waiting for the writer); that is right because the ledger only ever
//!    drops a value whose commit is durable.
//! 2. **It takes turns per key.** A call's first read of a key takes the
//!    key's turn, held until the call's commit is handed to the writer (not
//!    until it is durable). The next call that wants the key waits for the
//!    turn (outside its sandbox, see below) and then reads its
//!    predecessor's writes straight from the ledger. So a hot key is a
//!    queue of calls each reading the previous one's result: no conflicts,
//!    and no fsync between them.
//! 3. **It hands commits over in order.** Under its lock it checks the
//!    call's reads against its view, gives each change a fresh version,
//!    updates its view, and submits the commit to the writer
//!    (`Store::submit_finish`), whose operations run in submission order.
//!    So the writer checks versions in the order the ledger handed them
//!    out, and a successor's read version is the one its predecessor's
//!    commit writes.
//!
//! **Correctness never rests on the ledger's guess.** If a commit fails (a
//! COMMIT error, a refused version check), the keys it wrote become
//! `Unknown` in the ledger and are asked of the writer next time; a
//! successor that already read the guessed value fails the writer's version
//! check (versions never repeat, see `store/state.rs`) and runs again.
//!
//! **No deadlocks.** Nobody waits for a turn inside a sandbox: a call
//! there holds one of the host's few call tickets (`[sandbox] calls`), and
//! the holder of the turn it would wait for may itself be waiting for a
//! ticket (before its call, or for a mapper call of its posts), which
//! would stall both until a call timeout. So a read inside the sandbox
//! takes a free turn, and one taken by another job either gives up the
//! sandbox at once (the call holds no turn: [`StateReadError::Busy`]; the
//! pump runs it again, first taking the turns it touched plus this one,
//! outside), or is read without the turn (the call holds turns:
//! optimistically; its commit then checks that read like any other).
//! Turns are only waited for outside a sandbox, in key order: before a
//! call (a re-run, or a plugin's hot first key, `Ledger::hot_key`) and at
//! hand-over by a commit that holds none. Waits in key order while holding
//! only smaller keys cannot form a cycle, and a turn holder that waits for
//! a ticket waits only for calls that never wait for a turn, which end.
//! A call whose commit met a change runs again the same way, so a re-run
//! can only conflict on a key it did not touch before, and re-runs are
//! bounded by the number of keys a call touches.
//!
//! **Adds** (`state-add`) take no turn during the call: at commit the delta
//! is added to the ledger's current value (loaded first if needed). If
//! another call holds the key's turn, a commit that holds no turn of its
//! own waits for it (the call is over, so no sandbox is held); one that
//! holds turns counts as a conflict instead, and runs again holding all.
//! Blind writes (a set without a read) commit the same way.
//!
//! What this module must not do: speak SQL (the store does), or hold its
//! lock across `.await`.

pub mod int;
mod remote;
mod table;

pub use remote::{
    Remote, RemoteBatch, RemoteChange, RemoteCommitted, RemoteFuture, RemoteOutcome, RemoteRead,
};

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use table::{Slot, Table, Turn};

use crate::runtime::{StateFuture, StateReadError, StateSource};
use crate::store::{FinishResult, StateChange, StateCommit, Store, StoreError};

/// Bytes of state values (and keys) the ledger keeps once their commits
/// are durable, before it drops the oldest idle ones.
pub const DEFAULT_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The state ledger of one store; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Set on JetStream with `shared_state`: the store every host shares
    /// (then `store` holds no state; see `remote.rs`).
    remote: Option<Arc<dyn Remote>>,
    table: Mutex<Table>,
    sessions: AtomicU64,
    /// The last pending version handed out (shared state: `remote.rs`).
    tickets: AtomicI64,
    budget: usize,
}

impl Ledger {
    /// A ledger in front of `store`, keeping up to `budget` bytes of
    /// durable values.
    pub fn new(store: Store, budget: usize) -> Ledger {
        Ledger::with_remote(store, budget, None)
    }

    /// A ledger whose state lives in `remote` (when given), shared by
    /// every host, instead of in `store`.
    pub fn with_remote(store: Store, budget: usize, remote: Option<Arc<dyn Remote>>) -> Ledger {
        Ledger {
            inner: Arc::new(Inner {
                store,
                remote,
                table: Mutex::new(Table::default()),
                sessions: AtomicU64::new(0),
                tickets: AtomicI64::new(0),
                budget,
            }),
        }
    }

    /// Whether state lives in a store every host shares.
    pub fn is_shared(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// The marker of commit `job` in the shared store (`None` without
    /// one: see `remote.rs`).
    pub async fn marker(&self, job: &str) -> Result<Option<Vec<u8>>, String> {
        match &self.inner.remote {
            Some(remote) => remote.marker(job).await,
            None => Ok(None),
        }
    }

    /// A session for one job's call(s) on `plugin`'s state.
    pub fn session(&self, plugin: &str) -> Arc<Session> {
        let id = self.inner.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.lock().open_session(id, plugin);
        Arc::new(Session {
            inner: Arc::clone(&self.inner),
            id,
            plugin: plugin.to_owned(),
            touched: Mutex::new(BTreeSet::new()),
            reads: AtomicU64::new(0),
        })
    }

    /// A key a new job of `plugin` should take the turn of before its call
    /// starts, if any: the plugin's calls have been reading it first and
    /// are queueing for it (see `Table::hot_first_key`).
    pub fn hot_key(&self, plugin: &str) -> Option<String> {
        self.inner.lock().hot_first_key(plugin)
    }

    /// Bytes the ledger holds now (for tests and metrics).
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes()
    }
}

impl Inner {
    /// A fresh pending version: negative, never repeated.
    fn next_ticket(&self) -> i64 {
        self.tickets.fetch_sub(1, Ordering::Relaxed) - 1
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock would be a bug in `table.rs`; the
        // table is still consistent enough to go on (every method keeps
        // its invariants before it could panic).
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a commit could not be handed over.
#[derive(Debug)]
pub enum HandOff {
    /// Another call changed (or holds) what this call read or changes: run
    /// it again, first taking the turns of `keys` (sorted).
    Conflict {
        /// Every key the call touched.
        keys: Vec<String>,
    },
    /// An add met a value that is not an integer, or overflowed: retrying
    /// cannot help.
    Invalid(String),
    /// The store would not take the commit.
    Store(StoreError),
    /// The shared store failed or did not answer (the commit may have been
    /// stored: the job's marker tells, see `remote.rs`).
    Remote(String),
    /// The shared store refused the commit outright (its storage is full,
    /// an API error) or it never reached the store: nothing was stored;
    /// the job runs again later, without it costing an attempt.
    Unavailable(String),
}

/// The state effects of one call, as the runtime buffered them.
#[derive(Debug, Default, Clone)]
pub struct CallState {
    /// Key -> version read.
    pub reads: BTreeMap<String, i64>,
    /// Key -> new value (`None`: delete).
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Key -> delta (keys the call neither read nor wrote).
    pub adds: BTreeMap<String, i64>,
}

impl CallState {
    /// Whether the call touched no state at all.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty() && self.adds.is_empty()
    }

    fn keys(&self) -> BTreeSet<&String> {
        self.reads
            .keys()
            .chain(self.writes.keys())
            .chain(self.adds.keys())
            .collect()
    }
}

/// What one look under the lock decided.
enum Step {
    Done(Result<Handed, HandOff>),
    /// Take these turns (in order), then look again.
    Wait(Vec<String>),
    /// Load the adds' values again, then look again.
    Reload,
}

/// A commit handed to the writer: await [`Handed::finish`] for its outcome.
pub struct Handed {
    inner: Arc<Inner>,
    plugin: String,
    /// Key -> the version this commit gave it.
    versions: Vec<(String, i64)>,
    answer: Pin<Box<dyn Future<Output = Result<FinishResult, StoreError>> + Send>>,
}

impl Handed {
    /// The writer's answer; the ledger's view is settled with it.
    pub async fn finish(self) -> Result<FinishResult, StoreError> {
        let result = self.answer.await;
        let mut table = self.inner.lock();
        let reassigned: &[String] = match &result {
            Ok(FinishResult::Committed { reassigned, .. }) => reassigned,
            _ => &[],
        };
        let ok = matches!(result, Ok(FinishResult::Committed { .. }));
        for (key, version) in &self.versions {
            let durable = ok && !reassigned.contains(key);
            table.settle(&self.plugin, key, *version, durable);
        }
        table.evict(self.inner.budget);
        result
    }
}

/// One job's access to its plugin's state, across the re-runs of its call.
/// Dropping it gives up every turn it holds.
pub struct Session {
    inner: Arc<Inner>,
    id: u64,
    plugin: String,
    /// Every key this session read or waited for (for a re-run).
    touched: Mutex<BTreeSet<String>>,
    /// Reads so far (the first one feeds the plugin's hint).
    reads: AtomicU64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inner.lock().close_session(self.id);
    }
}

impl Session {
    /// The keys this session read or waited for.
    pub fn touched(&self) -> Vec<String> {
        self.touched
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn touch(&self, key: &str) {
        if let Ok(mut t) = self.touched.lock() {
            t.insert(key.to_owned());
        }
    }

    /// Gives up every turn, keeping the session (before a re-run).
    pub fn release_all(&self) {
        let mut table = self.inner.lock();
        let keys = table.held_keys(self.id);
        table.release(self.id, &keys);
    }

    /// Takes the turns of `keys` in sorted order, waiting for each, before
    /// a call starts (a re-run after a conflict). Holding only keys smaller
    /// than the one it waits for, it cannot deadlock (module docs).
    pub async fn acquire(&self, keys: &[String]) {
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        for key in sorted {
            self.touch(key);
            let turn = self.inner.lock().take(self.id, &self.plugin, key, true);
            if let Turn::Wait(granted) = turn {
                // An error means the turn can never come (the session is
                // closing); the commit's checks still hold.
                let _ = granted.await;
            }
        }
    }

    /// The value of `key` to build on, for a call in its sandbox: the
    /// ledger's, or loaded. Takes the key's turn if it is free; never
    /// waits for it (the call holds a sandbox ticket, see the module
    /// docs). Taken by another job: a session holding no turn gets
    /// [`StateReadError::Busy`] (its call gives up the sandbox and runs
    /// again holding the turn); one holding turns reads without it.
    pub async fn read(&self, key: &str) -> Result<(Option<Vec<u8>>, i64), StateReadError> {
        self.touch(key);
        if self.reads.fetch_add(1, Ordering::Relaxed) == 0 {
            self.inner.lock().first_read(&self.plugin, key);
        }
        loop {
            let (slot, generation) = {
                let mut table = self.inner.lock();
                let holds_none = table.held(self.id) == 0;
                match table.take(self.id, &self.plugin, key, false) {
                    Turn::Busy if holds_none => return Err(StateReadError::Busy),
                    Turn::Held | Turn::Busy | Turn::Wait(_) => table.slot(&self.plugin, key),
                }
            };
            let (value, version) = match slot {
                Slot::Known { value, version, .. } => return Ok((value, version)),
                slot => self.load(key, &slot).await.map_err(StateReadError::Store)?,
            };
            // Store it unless the entry changed meanwhile; either way look
            // again (the loop returns the entry's value).
            self.inner
                .lock()
                .loaded(&self.plugin, key, generation, value, version);
        }
    }

    /// Reads `key` from where state lives: the shared store, or this
    /// host's (committed data for an empty slot; for an unknown one, the
    /// writer, which sees every commit handed over before).
    async fn load(&self, key: &str, slot: &Slot) -> Result<(Option<Vec<u8>>, i64), String> {
        if let Some(remote) = &self.inner.remote {
            return remote.get(&self.plugin, key).await;
        }
        let store = &self.inner.store;
        let loaded = match slot {
            Slot::Unknown => store.state_get_latest(&self.plugin, key).await,
            _ => store.state_get(&self.plugin, key).await,
        }
        .map_err(|e| e.to_string())?;
        Ok((loaded.value, loaded.version))
    }

    /// Hands the call's state commit over: checks its reads against the
    /// ledger's view, versions its changes, and calls `submit` with the
    /// [`StateCommit`] under the ledger's lock (so submissions are in
    /// version order); then gives up every turn. `submit` must only queue
    /// the commit (e.g. `Store::submit_finish`), never block.
    pub async fn commit<F, S>(&self, state: CallState, submit: S) -> Result<Handed, HandOff>
    where
        S: FnOnce(StateCommit) -> Result<F, StoreError>,
        F: Future<Output = Result<FinishResult, StoreError>> + Send + 'static,
    {
        let mut submit = Some(submit);
        loop {
            // Adds need the current value: load what the ledger lacks.
            for key in state.adds.keys() {
                self.ensure_known(key).await?;
            }
            match self.try_commit(&state, &mut submit) {
                Step::Done(result) => return result,
                // Holding nothing, it may wait: take them all in order,
                // then look again.
                Step::Wait(keys) => self.acquire(&keys).await,
                // An add's value was evicted or made unknown since it was
                // loaded: load again.
                Step::Reload => {}
            }
        }
    }

    /// The part of [`Session::commit`] under the ledger's lock.
    fn try_commit<F, S>(&self, state: &CallState, submit: &mut Option<S>) -> Step
    where
        S: FnOnce(StateCommit) -> Result<F, StoreError>,
        F: Future<Output = Result<FinishResult, StoreError>> + Send + 'static,
    {
        let mut table = self.inner.lock();
        match self.check_turns(&table, state) {
            Ok(()) => {}
            Err(Ok(keys)) => return Step::Wait(keys),
            Err(Err(conflict)) => return Step::Done(Err(conflict)),
        }
        if state.adds.keys().any(|k| {
            !matches!(
                table.entry(&self.plugin, k).map(|e| &e.slot),
                Some(Slot::Known { .. })
            )
        }) {
            return Step::Reload;
        }
        for (key, seen) in &state.reads {
            if let Some(Slot::Known { version, .. }) =
                table.entry(&self.plugin, key).map(|e| &e.slot)
                && version != seen
            {
                return Step::Done(Err(self.conflict(state)));
            }
        }
        let mut commit = StateCommit {
            plugin: self.plugin.clone(),
            reads: state.reads.clone(),
            changes: BTreeMap::new(),
        };
        let mut views = Vec::new();
        for (key, value) in &state.writes {
            let version = self.inner.store.next_state_version();
            commit.changes.insert(
                key.clone(),
                StateChange::Put {
                    value: value.clone(),
                    version,
                },
            );
            views.push((key.clone(), value.clone(), version));
        }
        for (key, delta) in &state.adds {
            let Some(Slot::Known { value, version, .. }) =
                table.entry(&self.plugin, key).map(|e| &e.slot)
            else {
                return Step::Reload;
            };
            let Some(sum) = int::add(value.as_deref(), *delta) else {
                return Step::Done(Err(HandOff::Invalid(format!(
                    "state-add on key {key:?}: its value is not an integer, or adding {delta} overflows"
                ))));
            };
            let base = *version;
            let version = self.inner.store.next_state_version();
            commit.changes.insert(
                key.clone(),
                StateChange::Add {
                    delta: *delta,
                    base,
                    version,
                },
            );
            views.push((key.clone(), Some(sum), version));
        }
        let Some(submit) = submit.take() else {
            return Step::Done(Err(HandOff::Store(StoreError::Closed)));
        };
        let answer = match submit(commit) {
            Ok(answer) => answer,
            Err(e) => return Step::Done(Err(HandOff::Store(e))),
        };
        let mut versions = Vec::with_capacity(views.len());
        for (key, value, version) in views {
            table.set_slot(
                &self.plugin,
                &key,
                Slot::Known {
                    value,
                    version,
                    committed: false,
                },
            );
            versions.push((key, version));
        }
        let held = table.held_keys(self.id);
        table.release(self.id, &held);
        Step::Done(Ok(Handed {
            inner: Arc::clone(&self.inner),
            plugin: self.plugin.clone(),
            versions,
            answer: Box::pin(answer),
        }))
    }

    /// Under the lock, before a commit: `Ok` when no other call holds a
    /// key of `state` that this session does not; else, holding no turn,
    /// `Err(Ok(keys))` (wait for these, in order), or, holding some, a
    /// conflict (waiting then could deadlock).
    fn check_turns(
        &self,
        table: &Table,
        state: &CallState,
    ) -> Result<(), Result<Vec<String>, HandOff>> {
        let held = table.held_keys(self.id);
        let unheld: Vec<String> = state
            .keys()
            .into_iter()
            .filter(|k| !held.contains(k))
            .cloned()
            .collect();
        let busy = unheld.iter().any(|k| {
            table
                .entry(&self.plugin, k)
                .is_some_and(|e| e.owner.is_some_and(|o| o != self.id))
        });
        match (busy, held.is_empty()) {
            (false, _) => Ok(()),
            (true, true) => Err(Ok(unheld)),
            (true, false) => Err(Err(self.conflict(state))),
        }
    }

    /// A conflict: every key the call touched, for the re-run to take.
    fn conflict(&self, state: &CallState) -> HandOff {
        let mut keys: BTreeSet<String> = state.keys().into_iter().cloned().collect();
        keys.extend(self.touched());
        HandOff::Conflict {
            keys: keys.into_iter().collect(),
        }
    }

    /// Loads `key` into the ledger if it has no value for it.
    async fn ensure_known(&self, key: &str) -> Result<(), HandOff> {
        loop {
            let (slot, generation) = self.inner.lock().slot(&self.plugin, key);
            let (value, version) = match slot {
                Slot::Known { .. } => return Ok(()),
                slot => self.load(key, &slot).await.map_err(HandOff::Remote)?,
            };
            self.inner
                .lock()
                .loaded(&self.plugin, key, generation, value, version);
        }
    }
}

impl StateSource for Session {
    fn get(&self, key: &str) -> StateFuture<'_> {
        let key = key.to_owned();
        Box::pin(async move { self.read(&key).await })
    }
}

/// Committed state, read without turns or a ledger: for `sluice send`,
/// which runs a handler without committing anything.
pub struct Committed {
    /// The store to read.
    pub store: Store,
    /// Whose state.
    pub plugin: String,
}

/// The shared store's committed state (`[nats] shared_state`), read the
/// same way: for `sluice send`.
pub struct SharedCommitted {
    /// The store every host shares.
    pub remote: Arc<dyn Remote>,
    /// Whose state.
    pub plugin: String,
}

impl StateSource for SharedCommitted {
    fn get(&self, key: &str) -> StateFuture<'_> {
        let key = key.to_owned();
        Box::pin(async move {
            self.remote
                .get(&self.plugin, &key)
                .await
                .map_err(StateReadError::Store)
        })
    }
}

impl StateSource for Committed {
    fn get(&self, key: &str) -> StateFuture<'_> {
        let key = key.to_owned();
        Box::pin(async move {
            self.store
                .state_get(&self.plugin, &key)
                .await
                .map(|v| (v.value, v.version))
                .map_err(|e| StateReadError::Store(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests;
