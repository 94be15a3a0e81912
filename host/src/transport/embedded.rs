//! The embedded transport: the queue is the `jobs` table of the store, so one
//! host needs nothing but its own binary.
//!
//! Because the queue and the job records share one SQLite file, the store's
//! `finish` transaction *is* the ack: a job's outcome, its effects and its
//! removal from the queue commit together. `settle` therefore has nothing left
//! to do. Claims run on the store's single writer thread, so each job goes to
//! exactly one worker. Other processes (`sluice post`) write to the same file;
//! an idle pump polls for their rows every `poll_interval`, and in-process
//! publishes wake it at once.
//!
//! **No lost wake-ups.** A wake is a counter that goes up (a `watch`), not
//! a notification only current waiters hear: each subscription remembers
//! the count it saw when its last fetch began, and `wait` returns at once
//! if the count moved since. A publish that commits while a claim is on its
//! way (it waits for the group's fsync) is therefore picked up at once, not
//! after `poll_interval`; with a notification it was missed, which made the
//! median post -> handled at 2,000 msgs/s offered 82 ms (the poll interval
//! is 100 ms).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{Delivery, Receipt, Settle, Subscription, Transport, TransportError};
use crate::flow::{Gate, Hold};
use crate::store::{NewMessage, Published, Store};

/// The embedded SQLite queue.
#[derive(Clone)]
pub struct Embedded {
    store: Store,
    /// Counts wakes.
    wake: Arc<watch::Sender<u64>>,
    /// Per subscription, the wake count its last fetch began at.
    seen: Arc<Mutex<HashMap<Subscription, watch::Receiver<u64>>>>,
    poll_interval: Duration,
}

impl Embedded {
    /// A queue on `store`; idle pumps look for new rows every `poll_interval`.
    pub fn new(store: Store, poll_interval: Duration) -> Embedded {
        Embedded {
            store,
            wake: Arc::new(watch::Sender::new(0)),
            seen: Arc::default(),
            poll_interval,
        }
    }

    /// Wakes every idle pump (new rows may be due), and any pump whose
    /// fetch is under way when this is called.
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The receiver that tracks what `subscription` has seen.
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Subscription, watch::Receiver<u64>>> {
        // The map holds no invariant a panic elsewhere could break.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Transport for Embedded {
    async fn register(&self, subscriptions: &[Subscription]) -> Result<(), TransportError> {
        let routed = self
            .store
            .register_consumers(super::pairs(subscriptions))
            .await?;
        if routed > 0 {
            tracing::info!(
                routed,
                "routed messages posted before their handler was known"
            );
        }
        Ok(())
    }

    async fn retire(
        &self,
        handlers: &[String],
        serving: &[Subscription],
    ) -> Result<(), TransportError> {
        super::retire_in_store(&self.store, handlers, serving).await
    }

    async fn publish(&self, messages: Vec<NewMessage>) -> Result<Vec<Published>, TransportError> {
        let published = self.store.publish(messages).await?;
        self.wake();
        Ok(published)
    }

    async fn fetch(
        &self,
        subscription: &Subscription,
        max: usize,
    ) -> Result<Vec<Delivery>, TransportError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // Before the claim reads the table: a wake from here on makes the
        // next `wait` return at once.
        self.seen()
            .entry(subscription.clone())
            .or_insert_with(|| self.wake.subscribe())
            .mark_unchanged();
        let jobs = self
            .store
            .claim(&subscription.channel, &subscription.consumer, max)
            .await?;
        Ok(jobs
            .into_iter()
            .map(|job| Delivery {
                job,
                receipt: Receipt::Embedded,
                hold: None,
            })
            .collect())
    }

    async fn fetch_gated(
        &self,
        subscription: &Subscription,
        max: usize,
        gate: &Arc<Gate>,
    ) -> Result<Vec<Delivery>, TransportError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let jobs = self
            .store
            .claim_gated(
                &subscription.channel,
                &subscription.consumer,
                max,
                gate.clone(),
            )
            .await?;
        Ok(jobs
            .into_iter()
            .map(|(job, lease)| Delivery {
                job,
                receipt: Receipt::Embedded,
                hold: Some(Hold::new(lease, None)),
            })
            .collect())
    }

    async fn wait(&self, subscription: &Subscription, timeout: Duration) {
        let mut seen = self
            .seen()
            .get(subscription)
            .cloned()
            .unwrap_or_else(|| self.wake.subscribe());
        let _ = tokio::time::timeout(timeout.min(self.poll_interval), seen.changed()).await;
    }

    async fn settle(&self, _delivery: &Delivery, settle: Settle) -> Result<(), TransportError> {
        // The store's finish transaction already moved the row; a retry or
        // continuation may be due soon, so let idle pumps look again.
        if matches!(
            settle,
            Settle::Nak { .. } | Settle::Retry { .. } | Settle::Continue { .. }
        ) {
            self.wake();
        }
        Ok(())
    }

    fn heartbeat_every(&self) -> Option<Duration> {
        // A claim is held until the host's own transaction releases it.
        None
    }

    async fn in_progress(&self, _delivery: &Delivery) {}

    fn uses_outbox(&self) -> bool {
        false
    }

    /// A job whose call is over waits for its commit holding no slot: it
    /// is `running` in the store, so no claim can hand it out again, and
    /// the next claim joins the same group commit as these finishes
    /// instead of waiting for them (one fsync per round of jobs, not two).
    fn slot_until_settled(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageKind};
    use crate::store::StoreOptions;

    /// A post that commits between a pump's empty fetch and its wait wakes
    /// it at once. (With a notification only waiters hear, the wait slept
    /// the whole poll interval, an hour here.)
    #[tokio::test]
    async fn a_post_made_while_a_fetch_is_under_way_is_not_missed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("s.db"), &StoreOptions::default())?;
        let queue = Embedded::new(store, Duration::from_secs(3600));
        let sub = Subscription {
            channel: "c".into(),
            consumer: "h".into(),
        };
        queue.register(std::slice::from_ref(&sub)).await?;
        for i in 0..3 {
            assert!(queue.fetch(&sub, 8).await?.is_empty());
            let message = Message {
                id: format!("m{i}"),
                channel: "c".into(),
                kind: MessageKind::Command,
                headers: Vec::new(),
                body: b"{}".to_vec(),
            };
            queue
                .publish(vec![NewMessage {
                    message,
                    visible_at: 0,
                    expires_at: None,
                }])
                .await?;
            let woken = tokio::time::timeout(
                Duration::from_secs(60),
                queue.wait(&sub, Duration::from_secs(3600)),
            )
            .await;
            assert!(woken.is_ok(), "post {i}: the wait missed the wake");
            assert_eq!(queue.fetch(&sub, 8).await?.len(), 1);
        }
        Ok(())
    }
}
