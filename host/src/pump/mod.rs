//! One pump per subscription (channel, handler): pull, map, handle, commit,
//! settle.
//!
//! A pump holds a `Semaphore` of `concurrency` permits and fetches only as
//! many messages as it has free permits, so nothing waits in memory that
//! another host could be running. A delivery holds its permit until it is
//! settled, or (embedded, see `Transport::slot_until_settled`) until its
//! call is over, so the next claim overlaps the commit of the last round. Each message runs as its own task. On
//! shutdown the pump stops fetching, gives in-flight jobs the drain period,
//! then cancels what is left (the sandbox stops the guest) and hands those
//! jobs back unrun. Pumps never hold a lock across `.await`.

mod control;
mod mapping;
pub(crate) mod marker;
mod policy;
mod process;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use control::{Changes, Control, Running};
pub use mapping::{CAUSATION_HEADER, MapError, passthrough, post_id, to_messages, to_request};
pub use policy::{Breaker, backoff};

use crate::config::Config;
use crate::registry::Registry;
use crate::state::Ledger;
use crate::store::Store;
use crate::transport::{Subscription, Transport};

/// What every pump shares.
pub struct Deps<T> {
    /// Job records and state.
    pub store: Store,
    /// Per-plugin state as calls see it: turns per key, reads that need no
    /// commit, commits handed to the store in order (`crate::state`).
    pub state: Ledger,
    /// Where messages come from.
    pub transport: T,
    /// The live plugins.
    pub registry: Arc<Registry>,
    /// Policies and timings.
    pub config: Arc<Config>,
    /// Operator control (paused channels, running calls) and metrics.
    pub control: Arc<Control>,
}

/// How long a pump waits before looking again when its handler is not
/// loaded or its transport failed.
const IDLE_RETRY: Duration = Duration::from_secs(1);

/// The permit of the next round, or `None` once `shutdown` is cancelled.
/// The stop is looked at first: an unbiased `select!` picked a free permit
/// over a stop that had already come half the time, so a stopping pump
/// kept fetching (and, past the drain period, handing each job straight
/// back to be fetched again).
async fn next_permit(
    gate: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        permit = gate.clone().acquire_owned() => permit.ok(),
    }
}

/// Runs the pump for `sub` until `shutdown` is cancelled, then drains.
/// `hard_stop` is cancelled when the drain period is over (or on a second
/// signal): in-flight guests are then interrupted and their jobs handed back.
pub async fn run<T: Transport>(
    sub: Subscription,
    deps: Arc<Deps<T>>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let policy = deps.config.policy_for(&sub.consumer);
    let gate = Arc::new(Semaphore::new(policy.concurrency));
    let breaker = Arc::new(Breaker::new(&policy));
    // The handler's flow rules, if it has any: which due jobs may start.
    let flow = deps
        .config
        .flow_for(&sub.consumer)
        .map(|spec| deps.control.gate(&sub, spec));
    let tasks = TaskTracker::new();
    tracing::info!(channel = %sub.channel, handler = %sub.consumer, concurrency = policy.concurrency, "pump started");
    let mut paused_logged = false;
    loop {
        let Some(first) = next_permit(&gate, &shutdown).await else {
            break;
        };
        // Checked after a permit frees up: the job that just released it may
        // be the failure that opened the breaker.
        if let Some(pause) = breaker.open_for() {
            drop(first);
            tokio::select! {
                _ = tokio::time::sleep(pause) => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        let mut permits = vec![first];
        while let Ok(p) = gate.clone().try_acquire_owned() {
            permits.push(p);
        }
        let held = deps.control.is_paused(&sub.channel);
        if held || !deps.registry.current().serves(&sub) {
            // Paused: by an operator, or the handler (or the channel's
            // mapper) is not loaded; messages stay queued. A resume or hot
            // reload resumes it.
            if !paused_logged {
                if held {
                    tracing::info!(channel = %sub.channel, handler = %sub.consumer, "channel paused by operator; messages stay queued");
                } else {
                    tracing::warn!(channel = %sub.channel, handler = %sub.consumer, "handler not loaded (or its loaded version does not serve this channel); channel paused");
                }
                paused_logged = true;
            }
            drop(permits);
            tokio::select! {
                _ = tokio::time::sleep(IDLE_RETRY) => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        paused_logged = false;
        // A stop that came while this round waited (for the breaker, a
        // pause) takes no more work: after the drain period every job taken
        // now would only be handed straight back.
        if shutdown.is_cancelled() {
            break;
        }
        // Made before the claim, so a lease dropped meanwhile wakes the
        // wait below (see `Gate::freed`).
        let freed = flow.as_ref().map(|g| g.freed());
        let fetched = match &flow {
            Some(g) => deps.transport.fetch_gated(&sub, permits.len(), g).await,
            None => deps.transport.fetch(&sub, permits.len()).await,
        };
        let deliveries = match fetched {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(channel = %sub.channel, handler = %sub.consumer, error = %e, "fetch failed; retrying");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_RETRY) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        if deliveries.is_empty() {
            drop(permits);
            let freed = async {
                match freed {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = deps.transport.wait(&sub, IDLE_RETRY) => continue,
                _ = freed => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        for (delivery, permit) in deliveries.into_iter().zip(permits) {
            let deps = deps.clone();
            let sub = sub.clone();
            let breaker = breaker.clone();
            let cancel = hard_stop.child_token();
            // Boxed: a delivery's future is large (14.6 KB: the sandboxed
            // call's state lives in it), and tokio copies a task's future when
            // it spawns it and when it stores its output; boxed, a pointer.
            let job = Box::pin(async move {
                process::process(&deps, &sub, &policy, &breaker, delivery, cancel, permit).await;
            });
            tasks.spawn(job);
        }
    }
    tasks.close();
    if !tasks.is_empty() {
        tracing::info!(channel = %sub.channel, handler = %sub.consumer, in_flight = tasks.len(), "pump draining");
    }
    tokio::select! {
        _ = tasks.wait() => {}
        _ = hard_stop.cancelled() => tasks.wait().await,
    }
    tracing::info!(channel = %sub.channel, handler = %sub.consumer, "pump stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_pump_takes_no_permit_even_when_permits_are_free() {
        let gate = Arc::new(Semaphore::new(64));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        // Unbiased, a free permit won about half of these.
        for _ in 0..200 {
            assert!(next_permit(&gate, &shutdown).await.is_none());
        }
        assert_eq!(gate.available_permits(), 64);
    }

    #[tokio::test]
    async fn a_running_pump_gets_a_permit() {
        let gate = Arc::new(Semaphore::new(1));
        let shutdown = CancellationToken::new();
        let permit = next_permit(&gate, &shutdown).await;
        assert!(permit.is_some());
        assert_eq!(gate.available_permits(), 0);
    }
}
