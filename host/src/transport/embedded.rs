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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Delivery, Receipt, Settle, Subscription, Transport, TransportError};
use crate::flow::{Gate, Hold};
use crate::store::{NewMessage, Published, Store};

/// The embedded SQLite queue.
#[derive(Clone)]
pub struct Embedded {
    store: Store,
    wake: Arc<Notify>,
    poll_interval: Duration,
}

impl Embedded {
    /// A queue on `store`; idle pumps look for new rows every `poll_interval`.
    pub fn new(store: Store, poll_interval: Duration) -> Embedded {
        Embedded {
            store,
            wake: Arc::new(Notify::new()),
            poll_interval,
        }
    }

    /// Wakes every idle pump (new rows may be due).
    pub fn wake(&self) {
        self.wake.notify_waiters();
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

    async fn wait(&self, _subscription: &Subscription, timeout: Duration) {
        let notified = self.wake.notified();
        let _ = tokio::time::timeout(timeout.min(self.poll_interval), notified).await;
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
