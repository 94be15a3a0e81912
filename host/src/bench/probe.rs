//! In-process timestamps for post -> handled latency.
//!
//! Why a transport wrapper: the pump calls `settle` only after the job's
//! outcome (and effects) committed to SQLite, so the moment `settle` is
//! called is exactly "handled" as a user would see it, with nanosecond
//! clocks instead of the millisecond `created_at` / `finished_at` columns,
//! and without touching the pump. The bench names its messages
//! `<prefix><index>`, records when each was (meant to be) posted, and
//! [`Timed`] records when each was settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::stats::Percentiles;
use crate::store::{NewMessage, Published};
use crate::transport::{Delivery, Settle, Subscription, Transport, TransportError};

/// Post and handled times of one run's messages.
pub struct Probe {
    prefix: String,
    epoch: Instant,
    /// Nanoseconds since `epoch` (+1, so 0 means "not yet").
    posted: Vec<AtomicU64>,
    handled: Vec<AtomicU64>,
    done: AtomicUsize,
    /// Settles other than a success (retries, dead letters, conflicts).
    other: AtomicUsize,
    /// Dead letters: final settles that were not a success.
    dead: AtomicUsize,
    all_done: Notify,
}

impl Probe {
    /// A probe for `count` messages named `<prefix><index>`.
    pub fn new(prefix: String, count: usize) -> Arc<Probe> {
        Arc::new(Probe {
            prefix,
            epoch: Instant::now(),
            posted: (0..count).map(|_| AtomicU64::new(0)).collect(),
            handled: (0..count).map(|_| AtomicU64::new(0)).collect(),
            done: AtomicUsize::new(0),
            other: AtomicUsize::new(0),
            dead: AtomicUsize::new(0),
            all_done: Notify::new(),
        })
    }

    /// The id of message `index`.
    pub fn id(&self, index: usize) -> String {
        format!("{}{index}", self.prefix)
    }

    /// How many messages this probe follows.
    pub fn count(&self) -> usize {
        self.posted.len()
    }

    /// Records that message `index` was posted at `at`.
    pub fn posted(&self, index: usize, at: Instant) {
        if let Some(slot) = self.posted.get(index) {
            slot.store(self.nanos(at), Ordering::Relaxed);
        }
    }

    /// Messages handled successfully so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Settles that were not a success.
    pub fn other(&self) -> usize {
        self.other.load(Ordering::Relaxed)
    }

    /// Messages that reached an end: handled, or dead-lettered.
    fn ended(&self) -> usize {
        self.done() + self.dead.load(Ordering::Relaxed)
    }

    /// Waits until every message was handled or dead-lettered, or
    /// `timeout`; true if all were.
    pub async fn wait_all(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.all_done.notified();
            if self.ended() >= self.count() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.ended() >= self.count();
            }
        }
    }

    /// Post -> handled latency of every message handled.
    pub fn latencies(&self) -> Percentiles {
        let mut samples: Vec<u64> = self
            .posted
            .iter()
            .zip(&self.handled)
            .filter_map(|(p, h)| {
                let (p, h) = (p.load(Ordering::Relaxed), h.load(Ordering::Relaxed));
                (p > 0 && h > 0).then(|| h.saturating_sub(p))
            })
            .collect();
        Percentiles::of_nanos(&mut samples)
    }

    /// When the last message was handled, relative to `since`.
    pub fn last_handled_after(&self, since: Instant) -> Duration {
        let since = self.nanos(since);
        let last = self
            .handled
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        Duration::from_nanos(last.saturating_sub(since))
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn settled(&self, message_id: &str, settle: &Settle) {
        let Some(index) = message_id
            .strip_prefix(self.prefix.as_str())
            .and_then(|i| i.parse::<usize>().ok())
        else {
            return;
        };
        let Some(slot) = self.handled.get(index) else {
            return;
        };
        if *settle != Settle::Ack {
            self.other.fetch_add(1, Ordering::Relaxed);
            if matches!(settle, Settle::DeadLetter { .. }) {
                self.dead.fetch_add(1, Ordering::Relaxed);
                if self.ended() >= self.count() {
                    self.all_done.notify_waiters();
                }
            }
            return;
        }
        if slot.swap(self.nanos(Instant::now()), Ordering::Relaxed) == 0 {
            self.done.fetch_add(1, Ordering::Relaxed);
            if self.ended() >= self.count() {
                self.all_done.notify_waiters();
            }
        }
    }
}

/// A transport that tells a [`Probe`] when each delivery is settled.
pub struct Timed<T> {
    /// The real transport.
    pub inner: T,
    /// Where settle times go.
    pub probe: Arc<Probe>,
}

impl<T: Transport> Transport for Timed<T> {
    fn register(
        &self,
        subscriptions: &[Subscription],
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.inner.register(subscriptions)
    }

    fn publish(
        &self,
        messages: Vec<NewMessage>,
    ) -> impl Future<Output = Result<Vec<Published>, TransportError>> + Send {
        self.inner.publish(messages)
    }

    fn fetch(
        &self,
        subscription: &Subscription,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, TransportError>> + Send {
        self.inner.fetch(subscription, max)
    }

    fn fetch_gated(
        &self,
        subscription: &Subscription,
        max: usize,
        gate: &Arc<crate::flow::Gate>,
    ) -> impl Future<Output = Result<Vec<Delivery>, TransportError>> + Send {
        self.inner.fetch_gated(subscription, max, gate)
    }

    fn wait(
        &self,
        subscription: &Subscription,
        timeout: Duration,
    ) -> impl Future<Output = ()> + Send {
        self.inner.wait(subscription, timeout)
    }

    async fn settle(&self, delivery: &Delivery, settle: Settle) -> Result<(), TransportError> {
        let probe_settle = settle.clone();
        let result = self.inner.settle(delivery, settle).await;
        if result.is_ok() {
            self.probe.settled(&delivery.job.message.id, &probe_settle);
        }
        result
    }

    fn start(&self, delivery: &Delivery) -> impl Future<Output = crate::transport::Start> + Send {
        self.inner.start(delivery)
    }

    fn heartbeat_every(&self) -> Option<Duration> {
        self.inner.heartbeat_every()
    }

    fn in_progress(&self, delivery: &Delivery) -> impl Future<Output = ()> + Send {
        self.inner.in_progress(delivery)
    }

    fn uses_outbox(&self) -> bool {
        self.inner.uses_outbox()
    }

    fn slot_until_settled(&self) -> bool {
        self.inner.slot_until_settled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_its_own_successes() {
        let probe = Probe::new("run-".into(), 2);
        probe.posted(0, Instant::now());
        probe.settled("run-0", &Settle::Ack);
        probe.settled("run-0", &Settle::Ack);
        probe.settled("other-1", &Settle::Ack);
        probe.settled(
            "run-1",
            &Settle::Nak {
                delay: Duration::ZERO,
            },
        );
        assert_eq!(probe.done(), 1);
        assert_eq!(probe.other(), 1);
        assert_eq!(probe.latencies().count, 1);
        probe.settled("run-1", &Settle::Ack);
        assert_eq!(probe.done(), 2);
    }
}
