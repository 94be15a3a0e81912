//! Where messages come from and go to, behind one trait so the pump does not
//! care whether it runs on the embedded SQLite queue or (later) JetStream.
//!
//! The contract, in the order the pump uses it: `register` the (channel,
//! handler) pairs it serves; `fetch` up to N deliveries (never more than it
//! can run at once); `wait` when there was nothing; after the job's outcome is
//! committed to the store, `settle` the delivery (ack, nak with delay, term).
//! A backend must never lose a delivery that was fetched but not settled: it
//! comes back (lease expiry, restart recovery, redelivery).
//!
//! `transport` knows nothing about plugins.

mod embedded;
mod jetstream;
pub(crate) mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use embedded::Embedded;
pub(crate) use jetstream::cas;
pub use jetstream::{
    Got, JetStream, JetStreamError, JetStreamSettings, STREAM, SharedFlow, SharedState,
    server_addrs, state_key_subject,
};
pub use wire::WireError;

use crate::flow::{Gate, Hold};
use crate::store::{ClaimedJob, NewMessage, Published, Store, StoreError};

/// One durable consumer: the handler `consumer` reading `channel`. Hosts that
/// share a subscription compete for its messages; each handler of an event
/// channel has its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subscription {
    /// The channel.
    pub channel: String,
    /// The handler plugin's name.
    pub consumer: String,
}

/// A message handed to a pump, with what the backend needs to settle it.
#[derive(Debug)]
pub struct Delivery {
    /// The job and its message.
    pub job: ClaimedJob,
    /// The backend's handle on it.
    pub receipt: Receipt,
    /// Its place under its handler's flow rules (`crate::flow`), held
    /// until the delivery is dropped, after its outcome is recorded.
    pub hold: Option<Hold>,
}

/// A backend's handle on a delivery.
#[derive(Debug)]
pub enum Receipt {
    /// Embedded: the store's finish transaction is the ack.
    Embedded,
    /// JetStream: the message, acked/naked/termed through its reply subject.
    JetStream(Box<async_nats::jetstream::Message>),
}

/// How a delivery ends on the transport, once the store has recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done with (succeeded, expired): never redeliver.
    Ack,
    /// Redeliver after `delay` (retry, hand-back).
    Nak {
        /// How long to wait.
        delay: Duration,
    },
    /// A retryable failure was committed. On an outbox transport the retry
    /// travels as its own message (committed with the outcome, carrying the
    /// attempt count, kept by the server until due), so this delivery is
    /// acked and holds no consumer slot through the backoff; elsewhere it
    /// is a NAK with `delay`.
    Retry {
        /// The backoff.
        delay: Duration,
    },
    /// A slice was committed; the next one is scheduled (on JetStream it
    /// travels as its own message through the outbox, so this one is acked).
    Continue {
        /// When the next slice runs.
        delay: Duration,
    },
    /// Failed for good: keep a copy on the dead-letter subject and never
    /// redeliver.
    DeadLetter {
        /// Why.
        reason: String,
    },
}

/// What [`Transport::start`] says of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Run it.
    Run,
    /// Its message was replaced by message `by` (a `replace` post of its
    /// uniqueness key): record it cancelled, never run it.
    Replaced {
        /// The message that replaced it.
        by: String,
    },
    /// It cannot be told now (the server did not answer): hand it back.
    Fault(String),
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The store (embedded queue, inbox) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// JetStream failed.
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
}

/// (channel, handler) of each subscription, as the consumers table keeps
/// them.
fn pairs(subscriptions: &[Subscription]) -> Vec<(String, String)> {
    subscriptions
        .iter()
        .map(|s| (s.channel.clone(), s.consumer.clone()))
        .collect()
}

/// The consumers table follows the loaded set (see [`Transport::retire`]).
async fn retire_in_store(
    store: &Store,
    handlers: &[String],
    serving: &[Subscription],
) -> Result<(), TransportError> {
    let forgotten = store
        .retire_consumers(handlers.to_vec(), pairs(serving))
        .await?;
    for (channel, handler) in forgotten {
        tracing::info!(%channel, %handler, "the handler no longer lists the channel: new messages of it are not queued for it");
    }
    Ok(())
}

/// A message transport. See the module docs for the contract.
pub trait Transport: Send + Sync + 'static {
    /// Declares the subscriptions this host serves (idempotent).
    fn register(
        &self,
        subscriptions: &[Subscription],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Says that the loaded handlers `handlers` serve exactly `serving`
    /// now (at start and after every swap): a handler whose new version no
    /// longer lists a channel gets no new messages of it. The embedded
    /// queue forgets the pair, so a post to that channel is not queued for
    /// a handler that will not run it (with no handler left it is kept
    /// unrouted, and routed when one registers). JetStream keeps its
    /// durable consumer: other hosts may still run the old version, and a
    /// consumer created again would deliver the stream's history anew.
    fn retire(
        &self,
        handlers: &[String],
        serving: &[Subscription],
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        let _ = (handlers, serving);
        async { Ok(()) }
    }

    /// Enqueues messages (idempotent per message id).
    fn publish(
        &self,
        messages: Vec<NewMessage>,
    ) -> impl Future<Output = Result<Vec<Published>, TransportError>> + Send;

    /// Up to `max` deliveries that are due now; empty if none.
    fn fetch(
        &self,
        subscription: &Subscription,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, TransportError>> + Send;

    /// Up to `max` deliveries that are due now and that `gate` (the
    /// handler's flow rules) lets start, each holding its place; the
    /// others wait (embedded: queued; JetStream: turned back). Empty if
    /// none.
    fn fetch_gated(
        &self,
        subscription: &Subscription,
        max: usize,
        gate: &Arc<Gate>,
    ) -> impl Future<Output = Result<Vec<Delivery>, TransportError>> + Send;

    /// Returns when new work may have arrived, or after `timeout`.
    fn wait(
        &self,
        subscription: &Subscription,
        timeout: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// Ends a delivery after the store recorded its outcome.
    fn settle(
        &self,
        delivery: &Delivery,
        settle: Settle,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Whether `delivery` may run now, asked just before its handler is
    /// called: a JetStream message holding a uniqueness key marks it
    /// running (so a `replace` post can no longer take it) or finds it
    /// was replaced. The embedded queue decides that when the post
    /// commits, so its deliveries always run.
    fn start(&self, delivery: &Delivery) -> impl Future<Output = Start> + Send {
        let _ = delivery;
        async { Start::Run }
    }

    /// How often a running delivery must say it is still being worked on,
    /// or `None` if the backend does not need to hear it.
    fn heartbeat_every(&self) -> Option<Duration>;

    /// Tells the backend this delivery is still being worked on, so it is not
    /// handed to another host.
    fn in_progress(&self, delivery: &Delivery) -> impl Future<Output = ()> + Send;

    /// True when a committed call's posts go to the store's outbox (for a
    /// relay to publish) rather than straight into the queue.
    fn uses_outbox(&self) -> bool;

    /// Whether `message` (to its channel, or with `to` to that handler only)
    /// could ever be delivered, checked before the call that made it
    /// commits: the reason if not (too large for the server, a header it
    /// cannot carry). The embedded queue takes anything the store takes.
    fn check_message(&self, message: &NewMessage, to: Option<&str>) -> Result<(), String> {
        let _ = (message, to);
        Ok(())
    }

    /// True (the default) when a delivery holds its pump slot until it is
    /// settled, so the pump never has more deliveries than slots. A backend
    /// may free the slot as soon as the call is over instead, while the
    /// outcome commits, when nothing else could take the job meanwhile.
    fn slot_until_settled(&self) -> bool {
        true
    }
}
