//! The host-wide budget of sandboxed calls: admission to the instance pool.
//!
//! Why: every call holds a pool slot (an instance, its memory and tables,
//! a fiber stack) from instantiation until its store drops, and a slot's
//! pages stay resident. Each pump bounds only its own jobs (`concurrency`),
//! so ten busy channels at 64 would ask for 640 slots: past the pool, a
//! call failed ("instance pool exhausted") and cost its job an attempt,
//! and RSS grew with channels x concurrency. Here every call, handler and
//! mapper, of every pump, waits for one of `budget` tickets before it
//! instantiates. The pool holds exactly `budget` instances (`engine.rs`),
//! so it can never run dry; waiting costs no attempt and trips no breaker.
//!
//! **Fairness.** Calls queue in *lanes*, one per (plugin, channel). A
//! freed ticket goes to the waiting lane with the fewest calls running
//! (ties: the one served longest ago, round robin), so a busy channel
//! holding most of the budget, or with a long queue, cannot starve a quiet
//! one: the quiet one's next call gets the next ticket. Within a lane calls
//! keep their order. A pump's `concurrency` stays the upper bound on its
//! own jobs: the gate only ever makes a call wait.
//!
//! The lock is a std mutex held for a few map operations, never across an
//! await; tickets are handed over through oneshot channels after it is
//! released, and a ticket whose waiter gave up (its future was dropped) is
//! passed on to the next.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// The budget and its queues; shared by every call of one runtime.
#[derive(Debug)]
pub(super) struct Admission {
    budget: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Tickets out.
    running: usize,
    /// Waiters queued (a given-up waiter counts until it is reached).
    waiting: usize,
    /// Most tickets out at once since start.
    peak: usize,
    /// Tickets handed out since start.
    admitted: u64,
    /// Orders waiters across lanes.
    seq: u64,
    lanes: HashMap<String, Lane>,
}

#[derive(Debug, Default)]
struct Lane {
    running: usize,
    /// When this lane last got a ticket (`State::seq`), for round robin.
    last_grant: u64,
    waiters: VecDeque<(u64, oneshot::Sender<Ticket>)>,
}

/// What the budget looks like now, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct AdmissionStats {
    /// Calls that may run at once.
    pub budget: usize,
    /// Calls running now.
    pub running: usize,
    /// Calls waiting for a ticket.
    pub waiting: usize,
    /// Most calls running at once since start.
    pub peak: usize,
    /// Calls let in since start (`idle.rs` tells quiet from busy by it).
    pub admitted: u64,
}

/// The right to run one sandboxed call; gives it back when dropped.
#[derive(Debug)]
pub(super) struct Ticket {
    admission: Arc<Admission>,
    lane: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let next = {
            let mut s = self.admission.lock();
            s.running = s.running.saturating_sub(1);
            if let Some(lane) = s.lanes.get_mut(&self.lane) {
                lane.running = lane.running.saturating_sub(1);
                if lane.running == 0 && lane.waiters.is_empty() {
                    s.lanes.remove(&self.lane);
                }
            }
            self.admission.grant_next(&mut s)
        };
        // Outside the lock: a refused ticket is dropped here and passes on.
        if let Some((tx, ticket)) = next {
            let _ = tx.send(ticket);
        }
    }
}

impl Admission {
    pub(super) fn new(budget: usize) -> Arc<Admission> {
        Arc::new(Admission {
            budget: budget.max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a ticket for a call in `lane`.
    pub(super) async fn enter(self: &Arc<Self>, lane: &str) -> Ticket {
        loop {
            let rx = {
                let mut s = self.lock();
                if s.running < self.budget && s.waiting == 0 {
                    return self.issue(&mut s, lane);
                }
                let (tx, rx) = oneshot::channel();
                s.seq += 1;
                let seq = s.seq;
                s.lanes
                    .entry(lane.to_owned())
                    .or_default()
                    .waiters
                    .push_back((seq, tx));
                s.waiting += 1;
                rx
            };
            // Senders stay queued until they send, so this only fails if a
            // waiter was dropped from the queue: queue again.
            if let Ok(ticket) = rx.await {
                return ticket;
            }
        }
    }

    /// What the budget looks like now.
    pub(super) fn stats(&self) -> AdmissionStats {
        let s = self.lock();
        AdmissionStats {
            budget: self.budget,
            running: s.running,
            waiting: s.waiting,
            peak: s.peak,
            admitted: s.admitted,
        }
    }

    fn issue(self: &Arc<Self>, s: &mut State, lane: &str) -> Ticket {
        s.running += 1;
        s.peak = s.peak.max(s.running);
        s.admitted += 1;
        s.seq += 1;
        let seq = s.seq;
        let l = s.lanes.entry(lane.to_owned()).or_default();
        l.running += 1;
        l.last_grant = seq;
        Ticket {
            admission: Arc::clone(self),
            lane: lane.to_owned(),
        }
    }

    /// If a ticket is free, the fairest waiter and its ticket (to be sent
    /// once the lock is released).
    fn grant_next(self: &Arc<Self>, s: &mut State) -> Option<(oneshot::Sender<Ticket>, Ticket)> {
        while s.running < self.budget && s.waiting > 0 {
            let lane = s
                .lanes
                .iter()
                .filter_map(|(name, l)| {
                    let (seq, _) = l.waiters.front()?;
                    Some((l.running, l.last_grant, *seq, name))
                })
                .min()
                .map(|(_, _, _, name)| name.clone())?;
            let l = s.lanes.get_mut(&lane)?;
            let (_, tx) = l.waiters.pop_front()?;
            let idle = l.running == 0 && l.waiters.is_empty();
            s.waiting -= 1;
            if tx.is_closed() {
                // Its waiter gave up; forget the lane if nothing else is in it.
                if idle {
                    s.lanes.remove(&lane);
                }
                continue;
            }
            let ticket = self.issue(s, &lane);
            return Some((tx, ticket));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Order = tokio::sync::mpsc::UnboundedReceiver<&'static str>;

    /// Queues one waiter per lane in `lanes`, each reporting its lane on
    /// `tx` when admitted and giving its ticket back at once.
    async fn queue(a: &Arc<Admission>, lanes: &[&'static str]) -> Order {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for &lane in lanes {
            let before = a.stats().waiting;
            let (a2, tx) = (Arc::clone(a), tx.clone());
            tokio::spawn(async move {
                let _ticket = a2.enter(lane).await;
                let _ = tx.send(lane);
            });
            // Let it queue, so they queue in this order.
            while a.stats().waiting == before {
                tokio::task::yield_now().await;
            }
        }
        rx
    }

    #[tokio::test]
    async fn a_quiet_lane_gets_the_next_ticket_over_a_busy_one() {
        let a = Admission::new(2);
        let held = (a.enter("busy").await, a.enter("busy").await);
        let mut order = queue(&a, &["busy", "busy", "busy", "quiet"]).await;
        assert_eq!((a.stats().running, a.stats().waiting), (2, 4));
        drop(held.0);
        assert_eq!(order.recv().await, Some("quiet"));
        drop(held.1);
        for _ in 0..3 {
            assert_eq!(order.recv().await, Some("busy"));
        }
        let s = a.stats();
        assert_eq!((s.running, s.waiting, s.peak), (0, 0, 2));
        assert!(a.lock().lanes.is_empty(), "idle lanes are forgotten");
    }

    #[tokio::test]
    async fn lanes_take_turns_whatever_their_queue_length() {
        let a = Admission::new(1);
        let held = a.enter("x").await;
        let mut order = queue(&a, &["busy", "busy", "busy", "busy", "quiet", "other"]).await;
        drop(held);
        let mut got = Vec::new();
        for _ in 0..6 {
            got.extend(order.recv().await);
        }
        // busy first (it queued first), then each other lane before busy's
        // second call.
        assert_eq!(got[..3], ["busy", "quiet", "other"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_ticket_on() {
        let a = Admission::new(1);
        let held = a.enter("x").await;
        let gave_up = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.enter("y").await })
        };
        while a.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        gave_up.abort();
        let _ = gave_up.await;
        let mut order = queue(&a, &["z"]).await;
        drop(held);
        assert_eq!(order.recv().await, Some("z"));
        assert_eq!(a.stats().running, 0);
        assert!(a.lock().lanes.is_empty(), "the given-up lane is forgotten");
    }

    /// Many lanes on many threads, calls of uneven length, some waiters
    /// giving up: never more than the budget inside, every call that waits
    /// gets in, and nothing is left over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_budget_holds_under_a_crowd() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const BUDGET: usize = 3;
        let a = Admission::new(BUDGET);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..400usize {
            let (a, inside, most, done) = (
                Arc::clone(&a),
                Arc::clone(&inside),
                Arc::clone(&most),
                Arc::clone(&done),
            );
            let lane = format!("lane-{}", i % 8);
            tasks.push(tokio::spawn(async move {
                /// Counts itself out when dropped, aborted or not; declared
                /// after the ticket, so it goes first.
                struct Inside(Arc<AtomicUsize>);
                impl Drop for Inside {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _ticket = a.enter(&lane).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                let _inside = Inside(inside);
                most.fetch_max(now, Ordering::SeqCst);
                for _ in 0..(i % 5) {
                    tokio::task::yield_now().await;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // Every seventh gives up (while waiting or after it got in).
        let mut aborted = 0;
        for (i, t) in tasks.iter().enumerate() {
            if i % 7 == 3 {
                t.abort();
                aborted += 1;
            }
        }
        let mut finished = 0;
        for t in tasks {
            if t.await.is_ok() {
                finished += 1;
            }
        }
        assert!(most.load(Ordering::SeqCst) <= BUDGET);
        assert!(a.stats().peak <= BUDGET);
        assert_eq!(done.load(Ordering::SeqCst), finished);
        assert!(finished >= 400 - aborted);
        let s = a.stats();
        assert_eq!((s.running, s.waiting), (0, 0), "{s:?}");
        assert!(a.lock().lanes.is_empty());
    }
}
