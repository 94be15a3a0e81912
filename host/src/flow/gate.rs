//! One handler's gate on one host: which of its due jobs may start now.
//!
//! The store shows the gate the handler's due jobs in queue order, a page
//! at a time from a cursor (`offer`); the gate files each under its key in
//! a ready queue of its own, and `pick` serves the keys round robin,
//! skipping a key at its concurrency limit or out of rate tokens. So a
//! claim never walks the backlog of a key that cannot run: each due job is
//! read once when it is first offered (and once per rescan, below), and a
//! pick costs one step per key with work. A picked job that the store
//! hands out becomes a [`Lease`]: its key counts it as running until the
//! lease is dropped (after the job's outcome is recorded), which also wakes
//! the pump.
//!
//! The gate is memory only: on one host (the embedded queue) the store's
//! `running` rows are exactly the leases of the live process, and a start
//! re-queues the rows a dead one left running, so there is nothing to
//! persist. The ready queues are a cache of the store's rows: a job
//! cancelled or claimed meanwhile is dropped when the claim does not get
//! it.
//!
//! Two cursors read the store. The forward one reads on from the newest
//! row seen. A key buffers at most [`per_key_cap`] rows: past that its rows
//! are passed over (the first one passed is remembered), so one key's
//! flood of any size never fills the buffer and hides another key's job
//! behind it. The back cursor re-reads what the forward one passed: from a
//! key's first passed-over row once its queue runs low, and from the start
//! every [`RESCAN`] (a row committed behind the forward cursor: a post from
//! another process stamped a moment earlier). A claim alternates pages of
//! the two, so neither holds the other up.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::FlowSpec;
use super::rate::Bucket;
use crate::message::Headers;

/// Rows read from the store per page.
pub const SCAN_PAGE: usize = 512;

/// Pages a claim may read before it picks with what it has.
pub const SCAN_PAGES: usize = 8;

/// Due jobs a gate keeps in its ready queues at most (a bound on memory
/// with very many keys); past that, the store is read no further until
/// some start. One key alone never fills it ([`per_key_cap`]).
pub const MAX_BUFFERED: usize = 50_000;

/// How often a gate re-reads the store from the start (the back cursor).
pub const RESCAN: Duration = Duration::from_secs(2);

/// Rows of one key a gate buffers at most under `spec`: four rounds of its
/// concurrency limit, and at least 64 (a key refills from the store once
/// it is down to half).
pub fn per_key_cap(spec: &FlowSpec) -> usize {
    let limit = spec.concurrency.as_ref().map_or(1, |c| c.limit);
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_mul(4)
        .max(64)
}

/// A place in the queue order: `(visible_at, id)` of a row.
pub type Position = (i64, String);

/// Which cursor a page of rows was read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// On from the newest row seen.
    Forward,
    /// Again over rows the forward cursor passed.
    Back,
}

/// Buckets a handler keeps before it drops the full ones (a full bucket
/// is what a new one is, so dropping it changes nothing).
const BUCKETS_KEPT: usize = 1024;

/// A due job as the store shows it to the gate.
pub struct Row {
    /// Job id.
    pub id: String,
    /// Unix ms from which it may run (the queue order, with the id).
    pub visible_at: i64,
    /// Its message's headers.
    pub headers: Headers,
    /// Its message's body.
    pub body: Vec<u8>,
}

/// A job the gate let through, for the store to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Job id.
    pub id: String,
    /// Its fairness key.
    pub key: String,
}

/// Why a job waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Its key runs its limit of jobs.
    Concurrency(String),
    /// Its bucket (the handler's, or its key's) is empty.
    Rate,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Concurrency(key) => {
                write!(
                    f,
                    "waiting: concurrency {}",
                    crate::logfmt::escape_controls(key)
                )
            }
            Waiting::Rate => f.write_str("waiting: rate limit"),
        }
    }
}

#[derive(Debug)]
struct Ready {
    id: String,
    rate_key: String,
    /// Its message's `sluice-priority` (0: none).
    priority: u8,
}

/// Which of a key's queued jobs starts next: the most urgent (the oldest
/// among equals), except one pick in [`super::priority::FIFO_ONE_IN`]
/// that takes the oldest whatever its priority (as the plain claim
/// shares its room, `flow::priority`), so a key's old jobs are not starved
/// by its urgent ones. With no priorities, the oldest.
fn next_of(queue: &VecDeque<Ready>) -> usize {
    let mut best = 0;
    for (i, r) in queue.iter().enumerate() {
        if r.priority > queue[best].priority {
            best = i;
        }
    }
    if best > 0 && fastrand::u32(0..super::priority::FIFO_ONE_IN) == 0 {
        0
    } else {
        best
    }
}

/// What every gate of one handler shares (a handler may read several
/// channels, each with its own pump and gate; its limits are the
/// handler's): the running count per key and the rate buckets.
#[derive(Debug, Default)]
pub struct Shared {
    counts: Mutex<Counts>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct Counts {
    running: HashMap<String, u32>,
    buckets: HashMap<String, Bucket>,
    /// Prune full buckets when there are this many (grows with the live
    /// ones, so pruning costs O(1) a pick on average).
    prune_at: usize,
}

#[derive(Debug, Default)]
struct Inner {
    queues: HashMap<String, VecDeque<Ready>>,
    /// Keys with queued jobs, in serving order.
    turns: VecDeque<String>,
    known: HashSet<String>,
    /// The forward cursor: the newest row seen (`None`: from the start).
    cursor: Option<Position>,
    /// The back cursor, while it has work (`Some(None)`: from the start).
    back: Option<Option<Position>>,
    /// What the back cursor reads for: the keys it refills (it stops once
    /// each is full again), or everything (`None`: a rescan, to the
    /// forward cursor).
    back_for: Option<HashSet<String>>,
    /// Keys whose rows were passed over (over [`per_key_cap`]): from
    /// after where (`None`: the start).
    overflow: HashMap<String, Option<Position>>,
    rescanned: Option<Instant>,
    /// Buffered jobs that waited at the last pick, by reason.
    waiting: (usize, usize),
    /// Jobs turned back (JetStream), by reason.
    turned_back: (u64, u64),
}

/// See the module docs.
pub struct Gate {
    handler: String,
    spec: FlowSpec,
    inner: Mutex<Inner>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("handler", &self.handler)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gate {
    /// A gate of `handler` under `spec` for one of its channels; `shared`
    /// is what all its gates share.
    pub fn new(handler: &str, spec: FlowSpec, shared: Arc<Shared>) -> Arc<Gate> {
        Arc::new(Gate {
            handler: handler.to_owned(),
            spec,
            inner: Mutex::new(Inner::default()),
            shared,
        })
    }

    /// The handler it gates.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// Its rules.
    pub fn spec(&self) -> &FlowSpec {
        &self.spec
    }

    /// Where the store should read the next page of a claim from: which
    /// cursor, and after which position (`None`: from the start). `None`
    /// when there is nothing to read: the buffer is full, or the forward
    /// cursor is at the end (`forward_done`, in this claim) and the back
    /// one has no work. `prefer_back`: take the back cursor if it has work
    /// (the store alternates).
    pub fn next_page(
        &self,
        prefer_back: bool,
        forward_done: bool,
    ) -> Option<(Scan, Option<Position>)> {
        let mut g = lock(&self.inner);
        let g = &mut *g;
        if g.known.len() >= MAX_BUFFERED {
            return None;
        }
        if g.known.is_empty() && g.overflow.is_empty() {
            // Nothing buffered: every due row is unseen, so reading from
            // the start costs what reading on would.
            g.cursor = None;
            g.rescanned = Some(Instant::now());
        } else if g.rescanned.is_none_or(|t| t.elapsed() >= RESCAN) {
            g.back = Some(None);
            g.back_for = None;
            g.rescanned = Some(Instant::now());
        }
        if g.cursor.is_none() {
            // The forward cursor reads from the start: nothing is behind it.
            g.back = None;
            g.back_for = None;
        }
        match (&g.back, prefer_back || forward_done) {
            (Some(from), true) => Some((Scan::Back, from.clone())),
            _ if !forward_done => Some((Scan::Forward, g.cursor.clone())),
            (Some(from), false) => Some((Scan::Back, from.clone())),
            (None, _) => None,
        }
    }

    /// Files a page of due rows read with `scan` after `after` (in queue
    /// order; `full`: the page was a whole one, so there may be more)
    /// under their keys.
    pub fn offer(&self, scan: Scan, after: Option<Position>, rows: Vec<Row>, full: bool) {
        let mut g = lock(&self.inner);
        let g = &mut *g;
        let cap = per_key_cap(&self.spec);
        let mut prev = after;
        for row in rows {
            let pos = (row.visible_at, row.id.clone());
            if scan == Scan::Back && g.cursor.as_ref().is_some_and(|c| pos > *c) {
                // Past the forward cursor: the rest is its to read.
                g.back = None;
                g.back_for = None;
                return;
            }
            if g.known.len() >= MAX_BUFFERED {
                // Read this row again later: the cursor stays before it.
                return;
            }
            if !g.known.contains(&row.id) {
                let key = self.spec.fair_key(&row.headers, &row.body);
                let queue = g.queues.entry(key.clone()).or_default();
                if queue.len() >= cap {
                    // Passed over: found again from here once the key's
                    // queue runs low.
                    let from = g.overflow.entry(key).or_insert_with(|| prev.clone());
                    if prev < *from {
                        *from = prev.clone();
                    }
                } else {
                    let rate_key = self.spec.rate_key(&row.headers, &row.body);
                    let priority = crate::message::options::Options::of(&row.headers).priority;
                    g.known.insert(row.id.clone());
                    if queue.is_empty() {
                        g.turns.push_back(key.clone());
                    }
                    queue.push_back(Ready {
                        id: row.id,
                        rate_key,
                        priority,
                    });
                    let refilled = queue.len() >= cap;
                    if scan == Scan::Back
                        && refilled
                        && let Some(keys) = &mut g.back_for
                        && keys.remove(&key)
                    {
                        // Full again: more of its rows may follow, from
                        // here; and the refill may be over.
                        let from = g.overflow.entry(key).or_insert_with(|| Some(pos.clone()));
                        if Some(&pos) < from.as_ref() {
                            *from = Some(pos.clone());
                        }
                        if keys.is_empty() {
                            g.back = None;
                            g.back_for = None;
                            return;
                        }
                    }
                }
            }
            prev = Some(pos);
            match scan {
                Scan::Forward => g.cursor = prev.clone(),
                Scan::Back => g.back = Some(prev.clone()),
            }
        }
        if scan == Scan::Back && !full {
            g.back = None;
            g.back_for = None;
        }
    }

    /// Up to `max` jobs to start now at Unix ms `now`: the keys in turn,
    /// one job each per round, skipping keys at their limit and jobs whose
    /// bucket is empty (their tokens are taken here).
    pub fn pick(&self, max: usize, now: i64) -> Vec<Pick> {
        let mut g = lock(&self.inner);
        let g = &mut *g;
        // Lock order: the gate's queues, then the handler's counts.
        let mut c = lock(&self.shared.counts);
        let c = &mut *c;
        let mut out = Vec::new();
        let limit = self.spec.concurrency.as_ref().map(|c| c.limit);
        loop {
            let mut progressed = false;
            for _ in 0..g.turns.len() {
                if out.len() >= max {
                    break;
                }
                let Some(key) = g.turns.pop_front() else {
                    break;
                };
                let running = c.running.get(&key).copied().unwrap_or(0);
                let room = limit.is_none_or(|l| running < l);
                let mut taken = None;
                if room
                    && let Some(queue) = g.queues.get_mut(&key)
                    && !queue.is_empty()
                {
                    let at = next_of(queue);
                    let next = &queue[at];
                    let ok = match &self.spec.rate {
                        None => true,
                        Some(r) => {
                            let b = c
                                .buckets
                                .entry(next.rate_key.clone())
                                .or_insert_with(|| Bucket::full(&r.rate, now));
                            let (got, after) = b.take(&r.rate, now, 1);
                            *b = after;
                            got == 1
                        }
                    };
                    if ok {
                        taken = queue.remove(at);
                    }
                }
                if let Some(ready) = taken {
                    g.known.remove(&ready.id);
                    let left = g.queues.get(&key).map_or(0, VecDeque::len);
                    if left <= per_key_cap(&self.spec) / 2
                        && let Some(from) = g.overflow.remove(&key)
                    {
                        // Running low with rows passed over: read them.
                        g.back = Some(match g.back.take() {
                            Some(b) => b.min(from),
                            None => {
                                g.back_for = Some(HashSet::new());
                                from
                            }
                        });
                        if let Some(keys) = &mut g.back_for {
                            keys.insert(key.clone());
                        }
                    }
                    // Counted now, so a second pick of this round sees it.
                    *c.running.entry(key.clone()).or_default() += 1;
                    out.push(Pick {
                        id: ready.id,
                        key: key.clone(),
                    });
                    progressed = true;
                }
                if g.queues.get(&key).is_some_and(|q| !q.is_empty()) {
                    g.turns.push_back(key);
                } else {
                    g.queues.remove(&key);
                }
            }
            if !progressed || out.len() >= max {
                break;
            }
        }
        if c.buckets.len() >= c.prune_at.max(BUCKETS_KEPT)
            && let Some(r) = &self.spec.rate
        {
            let burst = f64::from(r.rate.burst);
            c.buckets.retain(|_, b| b.at(&r.rate, now).tokens < burst);
            c.prune_at = c.buckets.len().saturating_mul(2);
        }
        // What is left waits: count why, for `/metrics`.
        let (mut conc, mut rate) = (0, 0);
        for (key, queue) in &g.queues {
            let full = limit.is_some_and(|l| c.running.get(key).copied().unwrap_or(0) >= l);
            if full {
                conc += queue.len();
            } else {
                rate += queue.len();
            }
        }
        g.waiting = (conc, rate);
        out
    }

    /// Says which picks the store handed out (`got`, by id); the others
    /// were gone (cancelled, or not due any more) and are forgotten. Each
    /// job handed out becomes a lease.
    pub fn claimed(self: &Arc<Self>, picks: Vec<Pick>, got: &HashSet<String>) -> Vec<Lease> {
        let mut leases = Vec::new();
        for pick in picks {
            if got.contains(&pick.id) {
                leases.push(Lease {
                    gate: self.clone(),
                    key: pick.key,
                    id: pick.id,
                });
            } else {
                self.release(&pick.key);
            }
        }
        leases
    }

    /// A job of this gate that started without a pick (JetStream: the
    /// shared slots admitted it) counts as running here until the lease
    /// is dropped.
    pub fn admit(self: &Arc<Self>, id: &str, key: String) -> Lease {
        *lock(&self.shared.counts)
            .running
            .entry(key.clone())
            .or_default() += 1;
        Lease {
            gate: self.clone(),
            key,
            id: id.to_owned(),
        }
    }

    fn release(&self, key: &str) {
        let mut c = lock(&self.shared.counts);
        if let Some(n) = c.running.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.running.remove(key);
            }
        }
        drop(c);
        self.shared.freed.notify_waiters();
    }

    /// Returns once a lease of the handler was dropped (a key may have
    /// room again). Create the future before the claim it follows, so a
    /// lease dropped in between is not missed.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.freed.notified()
    }

    /// Why a due, queued job of this handler with `headers` and `body`
    /// would wait now, if it would.
    pub fn waiting_reason(&self, headers: &Headers, body: &[u8], now: i64) -> Option<Waiting> {
        let g = lock(&self.shared.counts);
        if let Some(c) = &self.spec.concurrency {
            let key = c.key.key_of(headers, body);
            if g.running.get(&key).copied().unwrap_or(0) >= c.limit {
                return Some(Waiting::Concurrency(key));
            }
        }
        if let Some(r) = &self.spec.rate {
            let key = self.spec.rate_key(headers, body);
            if g.buckets
                .get(&key)
                .is_some_and(|b| b.wait_ms(&r.rate, now) > 0)
            {
                return Some(Waiting::Rate);
            }
        }
        None
    }

    /// Buffered jobs that waited at the last pick: (for a concurrency
    /// limit, for a rate limit).
    pub fn waiting_counts(&self) -> (usize, usize) {
        lock(&self.inner).waiting
    }

    /// Jobs of `key` running now (under this gate's leases).
    pub fn running(&self, key: &str) -> u32 {
        lock(&self.shared.counts)
            .running
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Counts a job turned back (JetStream: it waits in the stream, not
    /// in this gate), for `/metrics`.
    pub fn note_waited(&self, rate: bool) {
        let mut g = lock(&self.inner);
        if rate {
            g.turned_back.1 += 1;
        } else {
            g.turned_back.0 += 1;
        }
    }

    /// Jobs turned back so far: (for a concurrency limit, for a rate
    /// limit).
    pub fn turned_back(&self) -> (u64, u64) {
        lock(&self.inner).turned_back
    }
}

/// A started job's place under its key's limit; dropping it frees the
/// place and wakes the pump.
pub struct Lease {
    gate: Arc<Gate>,
    key: String,
    id: String,
}

impl Lease {
    /// The job's fairness key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("handler", &self.gate.handler)
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.gate.release(&self.key);
    }
}

#[cfg(test)]
mod tests;
