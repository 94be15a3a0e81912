//! The ledger's table: one entry per state key it knows about, with the
//! value it believes is current, who holds the key's turn and who waits for
//! it. Plain data behind one `std::sync::Mutex` (in `mod.rs`); every method
//! here is quick and never awaits.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

/// Bytes counted per entry on top of its key and value (the map slot, the
/// entry, the key's `String`): so a budget also bounds many tiny keys.
const ENTRY_OVERHEAD: usize = 96;

/// Calls in a row that must have read the same key first before a new
/// call of the plugin may take that key's turn before its sandbox starts.
const HINT_STREAK: u32 = 16;

/// What the ledger knows of a key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Slot {
    /// Nothing: the committed value on disk is current (the ledger never
    /// drops a value that is not committed, see `evict`), so read it there.
    Empty,
    /// A commit that wrote this key failed or was refused after the ledger
    /// had shown its value to others: ask the writer, which sees every
    /// operation handed over before the question.
    Unknown,
    /// The value after every commit handed over so far (`None`: absent).
    Known {
        value: Option<Vec<u8>>,
        version: i64,
        /// True once the commit that wrote it (or the read that loaded it)
        /// is durable; only then may the entry be evicted.
        committed: bool,
    },
}

/// Someone waiting for a key's turn.
#[derive(Debug)]
struct Waiter {
    session: u64,
    granted: oneshot::Sender<()>,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) slot: Slot,
    pub(super) owner: Option<u64>,
    waiters: VecDeque<Waiter>,
    /// Changes whenever `slot` does; a load started at one generation is
    /// stored only if the entry is still at it.
    pub(super) generation: u64,
    /// Shared state: the pending ticket the current version replaced when
    /// the store answered, and that version (see [`Table::resolve`]).
    alias: Option<(i64, i64)>,
}

impl Entry {
    fn bytes(key: &str, slot: &Slot) -> usize {
        let value = match slot {
            Slot::Known { value, .. } => value.as_ref().map_or(0, Vec::len),
            _ => 0,
        };
        ENTRY_OVERHEAD + key.len() + value
    }

    fn idle(&self) -> bool {
        self.owner.is_none() && self.waiters.is_empty()
    }
}

/// What a session asking for a key's turn gets.
#[derive(Debug)]
pub(super) enum Turn {
    /// The session holds the key (now or already).
    Held,
    /// Another session holds it; resolves when it is this session's turn.
    Wait(oneshot::Receiver<()>),
    /// Another session holds it and this one may not wait (it holds keys
    /// itself): it reads without the turn, and its commit checks the read.
    Busy,
}

/// Per session: the keys whose turn it holds.
#[derive(Debug, Default)]
struct Held {
    plugin: String,
    keys: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct Table {
    plugins: HashMap<String, HashMap<String, Entry>>,
    sessions: HashMap<u64, Held>,
    generations: u64,
    /// Bytes of every entry, by [`Entry::bytes`].
    bytes: usize,
    /// Per plugin: the key its calls read first lately, and how many calls
    /// in a row did.
    first_reads: HashMap<String, (String, u32)>,
}

impl Table {
    pub(super) fn open_session(&mut self, id: u64, plugin: &str) {
        self.sessions.insert(
            id,
            Held {
                plugin: plugin.to_owned(),
                keys: Vec::new(),
            },
        );
    }

    /// Notes that a call of `plugin` read `key` before any other key.
    pub(super) fn first_read(&mut self, plugin: &str, key: &str) {
        match self.first_reads.get_mut(plugin) {
            Some((k, streak)) if k == key => *streak = streak.saturating_add(1),
            Some(hint) => *hint = (key.to_owned(), 1),
            None => {
                self.first_reads
                    .insert(plugin.to_owned(), (key.to_owned(), 1));
            }
        }
    }

    /// The key a new call of `plugin` should wait for before its sandbox
    /// starts: the one its calls have been reading first, while another
    /// job holds it. Started anyway, the call would give up its sandbox at
    /// that read (nobody waits inside one) and run again; a wrong guess
    /// only costs the call its place in that key's queue, never
    /// correctness (holding a turn is always safe).
    pub(super) fn hot_first_key(&self, plugin: &str) -> Option<String> {
        let (key, streak) = self.first_reads.get(plugin)?;
        let entry = self.entry(plugin, key)?;
        (*streak >= HINT_STREAK && entry.owner.is_some()).then(|| key.clone())
    }

    /// How many keys' turns `session` holds.
    pub(super) fn held(&self, session: u64) -> usize {
        self.sessions.get(&session).map_or(0, |h| h.keys.len())
    }

    /// The keys whose turns `session` holds.
    pub(super) fn held_keys(&self, session: u64) -> Vec<String> {
        self.sessions
            .get(&session)
            .map_or_else(Vec::new, |h| h.keys.clone())
    }

    pub(super) fn entry(&self, plugin: &str, key: &str) -> Option<&Entry> {
        self.plugins.get(plugin)?.get(key)
    }

    fn entry_mut(&mut self, plugin: &str, key: &str) -> &mut Entry {
        let generation = self.next_generation();
        let keys = self.plugins.entry(plugin.to_owned()).or_default();
        if !keys.contains_key(key) {
            self.bytes += Entry::bytes(key, &Slot::Empty);
        }
        keys.entry(key.to_owned()).or_insert_with(|| Entry {
            slot: Slot::Empty,
            owner: None,
            waiters: VecDeque::new(),
            generation,
            alias: None,
        })
    }

    fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Asks for `key`'s turn for `session`. `may_wait`: queue behind the
    /// holder (else [`Turn::Busy`]).
    pub(super) fn take(&mut self, session: u64, plugin: &str, key: &str, may_wait: bool) -> Turn {
        let entry = self.entry_mut(plugin, key);
        match entry.owner {
            Some(owner) if owner == session => Turn::Held,
            None => {
                entry.owner = Some(session);
                if let Some(held) = self.sessions.get_mut(&session) {
                    held.keys.push(key.to_owned());
                }
                Turn::Held
            }
            Some(_) if !may_wait => Turn::Busy,
            Some(_) => {
                let (granted, rx) = oneshot::channel();
                entry.waiters.push_back(Waiter { session, granted });
                Turn::Wait(rx)
            }
        }
    }

    /// The entry's slot and generation (an entry is created if needed, so a
    /// load started now can be matched later).
    pub(super) fn slot(&mut self, plugin: &str, key: &str) -> (Slot, u64) {
        let entry = self.entry_mut(plugin, key);
        (entry.slot.clone(), entry.generation)
    }

    /// Stores a loaded value if the entry has not changed since the load
    /// started. False when it did (the caller looks again).
    pub(super) fn loaded(
        &mut self,
        plugin: &str,
        key: &str,
        generation: u64,
        value: Option<Vec<u8>>,
        version: i64,
    ) -> bool {
        let matches = self
            .entry(plugin, key)
            .is_some_and(|e| e.generation == generation && !matches!(e.slot, Slot::Known { .. }));
        if matches {
            self.set_slot(
                plugin,
                key,
                Slot::Known {
                    value,
                    version,
                    committed: true,
                },
            );
        }
        matches
    }

    /// Replaces a key's slot (a new generation).
    pub(super) fn set_slot(&mut self, plugin: &str, key: &str, slot: Slot) {
        let generation = self.next_generation();
        let entry = self.entry_mut(plugin, key);
        let before = Entry::bytes(key, &entry.slot);
        let after = Entry::bytes(key, &slot);
        entry.slot = slot;
        entry.generation = generation;
        self.bytes = self.bytes.saturating_sub(before) + after;
    }

    /// A commit that gave `key` `version` is settled: durable (`ok`), or
    /// not applied (then the value shown since is wrong: ask the writer).
    /// A newer change to the key since then is left alone: its own commit
    /// settles it.
    pub(super) fn settle(&mut self, plugin: &str, key: &str, version: i64, ok: bool) {
        let Some(entry) = self.plugins.get_mut(plugin).and_then(|k| k.get_mut(key)) else {
            return;
        };
        let Slot::Known {
            version: now,
            committed,
            ..
        } = &mut entry.slot
        else {
            return;
        };
        if *now != version {
            return;
        }
        if ok {
            *committed = true;
            return;
        }
        self.set_slot(plugin, key, Slot::Unknown);
    }

    /// Shared state: the store answered for the write that showed `key` at
    /// the pending version `ticket`: stored as `version`, or not (`None`:
    /// ask the store). A newer change to the key since then is left alone
    /// (its own answer settles it). A stored one keeps the ticket as an
    /// alias, so a call that read the pending value still matches.
    pub(super) fn resolve(&mut self, plugin: &str, key: &str, ticket: i64, version: Option<i64>) {
        let Some(entry) = self.plugins.get_mut(plugin).and_then(|k| k.get_mut(key)) else {
            return;
        };
        let Slot::Known {
            value,
            version: now,
            ..
        } = &entry.slot
        else {
            return;
        };
        if *now != ticket {
            return;
        }
        match version {
            Some(version) => {
                let value = value.clone();
                entry.alias = Some((ticket, version));
                self.set_slot(
                    plugin,
                    key,
                    Slot::Known {
                        value,
                        version,
                        committed: true,
                    },
                );
            }
            None => self.set_slot(plugin, key, Slot::Unknown),
        }
    }

    /// The alias [`Table::resolve`] left on `key`: (ticket, version).
    pub(super) fn alias(&self, plugin: &str, key: &str) -> Option<(i64, i64)> {
        self.entry(plugin, key).and_then(|e| e.alias)
    }

    /// Gives up every turn `session` holds (each to its next waiter) and
    /// forgets the session.
    pub(super) fn close_session(&mut self, session: u64) {
        let Some(held) = self.sessions.remove(&session) else {
            return;
        };
        for key in held.keys {
            self.pass_turn(&held.plugin, &key, session);
        }
        // A waiter whose session ends before its turn came stays queued
        // until the turn reaches it; `pass_turn` then skips it (its
        // receiver is gone) or, if the session is gone, hands it on.
    }

    /// Gives up the turns `session` holds on `keys` and keeps the session.
    pub(super) fn release(&mut self, session: u64, keys: &[String]) {
        let Some(plugin) = self.sessions.get(&session).map(|h| h.plugin.clone()) else {
            return;
        };
        if let Some(held) = self.sessions.get_mut(&session) {
            held.keys.retain(|k| !keys.contains(k));
        }
        for key in keys {
            self.pass_turn(&plugin, key, session);
        }
    }

    /// `key`'s turn goes from `from` to the first waiter still there.
    fn pass_turn(&mut self, plugin: &str, key: &str, from: u64) {
        let Some(entry) = self.plugins.get_mut(plugin).and_then(|k| k.get_mut(key)) else {
            return;
        };
        if entry.owner != Some(from) {
            return;
        }
        entry.owner = None;
        while let Some(waiter) = entry.waiters.pop_front() {
            let alive = self.sessions.contains_key(&waiter.session);
            if alive && waiter.granted.send(()).is_ok() {
                entry.owner = Some(waiter.session);
                if let Some(held) = self.sessions.get_mut(&waiter.session) {
                    held.keys.push(key.to_owned());
                }
                return;
            }
        }
        if entry.idle() && entry.slot == Slot::Empty {
            self.remove(plugin, key);
        }
    }

    fn remove(&mut self, plugin: &str, key: &str) {
        if let Some(keys) = self.plugins.get_mut(plugin)
            && let Some(entry) = keys.remove(key)
        {
            self.bytes = self.bytes.saturating_sub(Entry::bytes(key, &entry.slot));
            if keys.is_empty() {
                self.plugins.remove(plugin);
            }
        }
    }

    /// Bytes the table holds, by its own count.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// When over `budget`, drops idle entries whose value is committed (or
    /// empty) until at most 3/4 of it is used. Entries with a turn, waiters,
    /// a value not yet durable, or an unknown value stay: dropping those
    /// would lose what the disk does not have yet.
    pub(super) fn evict(&mut self, budget: usize) {
        if self.bytes <= budget {
            return;
        }
        let target = budget / 4 * 3;
        let mut victims = Vec::new();
        let mut freed = 0;
        'plugins: for (plugin, keys) in &self.plugins {
            for (key, entry) in keys {
                let evictable = entry.idle()
                    && matches!(
                        entry.slot,
                        Slot::Empty
                            | Slot::Known {
                                committed: true,
                                ..
                            }
                    );
                if evictable {
                    freed += Entry::bytes(key, &entry.slot);
                    victims.push((plugin.clone(), key.clone()));
                    if self.bytes.saturating_sub(freed) <= target {
                        break 'plugins;
                    }
                }
            }
        }
        for (plugin, key) in victims {
            self.remove(&plugin, &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_pass_in_order_and_skip_the_departed() {
        let mut t = Table::default();
        for s in 1..=4 {
            t.open_session(s, "p");
        }
        assert!(matches!(t.take(1, "p", "k", true), Turn::Held));
        let Turn::Wait(mut two) = t.take(2, "p", "k", true) else {
            panic!("waits");
        };
        let Turn::Wait(three) = t.take(3, "p", "k", true) else {
            panic!("waits");
        };
        assert!(matches!(t.take(4, "p", "k", false), Turn::Busy));
        drop(three);
        t.close_session(1);
        assert!(two.try_recv().is_ok(), "2 is next");
        assert_eq!(t.entry("p", "k").and_then(|e| e.owner), Some(2));
        t.close_session(2);
        assert_eq!(
            t.entry("p", "k").map(|e| e.owner),
            None,
            "3 left, nobody waits: the empty entry is gone"
        );
    }

    #[test]
    fn a_load_that_raced_a_change_is_not_stored() {
        let mut t = Table::default();
        let (_, generation) = t.slot("p", "k");
        t.set_slot(
            "p",
            "k",
            Slot::Known {
                value: Some(b"new".to_vec()),
                version: 9,
                committed: false,
            },
        );
        assert!(!t.loaded("p", "k", generation, Some(b"old".to_vec()), 3));
        assert!(matches!(
            t.entry("p", "k").map(|e| &e.slot),
            Some(Slot::Known { version: 9, .. })
        ));
    }

    #[test]
    fn a_failed_commit_makes_its_value_unknown_unless_overwritten() {
        let mut t = Table::default();
        let known = |version| Slot::Known {
            value: Some(b"v".to_vec()),
            version,
            committed: false,
        };
        t.set_slot("p", "a", known(5));
        t.set_slot("p", "b", known(6));
        t.set_slot("p", "b", known(7));
        t.settle("p", "a", 5, false);
        t.settle("p", "b", 6, false);
        assert_eq!(t.entry("p", "a").map(|e| &e.slot), Some(&Slot::Unknown));
        assert!(
            matches!(
                t.entry("p", "b").map(|e| &e.slot),
                Some(Slot::Known { version: 7, .. })
            ),
            "a newer change is settled by its own commit"
        );
    }

    #[test]
    fn eviction_keeps_what_is_not_durable_or_in_use() {
        let mut t = Table::default();
        t.open_session(1, "p");
        for i in 0..100 {
            t.set_slot(
                "p",
                &format!("k{i}"),
                Slot::Known {
                    value: Some(vec![0; 100]),
                    version: i,
                    committed: i >= 10,
                },
            );
        }
        assert!(matches!(t.take(1, "p", "k50", true), Turn::Held));
        t.evict(2_000);
        for i in 0..10 {
            assert!(
                t.entry("p", &format!("k{i}")).is_some(),
                "not durable: kept"
            );
        }
        assert!(t.entry("p", "k50").is_some(), "held: kept");
        assert!(t.bytes() <= 2_000 || t.entry("p", "k99").is_none());
        let left = (10..100)
            .filter(|i| t.entry("p", &format!("k{i}")).is_some())
            .count();
        assert!(left < 20, "{left} committed entries left");
    }
}
