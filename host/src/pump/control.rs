//! Operator control of running pumps: pausing a channel (Brighter's stop and
//! start of a single channel) and interrupting one running job.
//!
//! Why here and not in the store: both act on this process's pumps, not on
//! records. A paused channel's pump keeps running but stops fetching, so
//! its messages stay queued (or in the stream, on JetStream) and a resume
//! picks them up without a restart. Pauses live in memory: a restarted
//! daemon serves every channel again, which is what an operator who forgot
//! a pause wants more often than not.
//!
//! Interrupting uses the same sandbox cancellation as shutdown, so a pump
//! must tell the two apart: a shutdown hands the job back to the queue,
//! an operator cancel records it `cancelled`. Each running call therefore
//! registers its token with a flag that only [`Control::interrupt`] sets.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::flow::{self, FlowSpec, Gate};
use crate::metrics::{InFlight, Metrics};
use crate::runtime::{Runtime, SandboxStats};
use crate::transport::Subscription;

/// Job ids whose records changed and are not yet shared: a set, so a job
/// that changes again before it is shared is held once, and what waits is
/// bounded by the jobs that changed, not by how often. An id whose sharing
/// failed goes back in (`put_back`), so a failed write is retried, not
/// dropped.
#[derive(Debug, Default)]
pub struct Changes {
    on: AtomicBool,
    ids: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl Changes {
    fn add(&self, id: &str) {
        if self.on.load(Ordering::Relaxed) {
            lock(&self.ids).insert(id.to_owned());
            self.notify.notify_one();
        }
    }

    /// Takes every waiting id.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.ids)).into_iter().collect()
    }

    /// Puts back ids that could not be shared.
    pub fn put_back(&self, ids: impl IntoIterator<Item = String>) {
        lock(&self.ids).extend(ids);
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        lock(&self.ids).len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Until an id is added (at once if one was added since the last wait).
    pub async fn added(&self) {
        self.notify.notified().await;
    }
}

/// One running call, as [`Control`] knows it.
#[derive(Debug)]
struct RunningCall {
    token: CancellationToken,
    by_operator: AtomicBool,
}

/// Shared by the pumps and the API. The locks are std mutexes held for a
/// map operation only, never across `.await`.
#[derive(Debug, Default)]
pub struct Control {
    running: Mutex<HashMap<String, Arc<RunningCall>>>,
    paused: Mutex<BTreeSet<String>>,
    /// Ids of jobs whose record changed, for the status board shared by
    /// the hosts of a JetStream (`crate::cluster`); off unless subscribed.
    changes: Arc<Changes>,
    /// This process's counters.
    pub metrics: Metrics,
    /// The runtime whose gauges `/metrics` shows (none in unit tests).
    sandbox: Option<Runtime>,
    /// The span exporter, when `[otel]` is configured (set once at start).
    spans: std::sync::OnceLock<Arc<crate::telemetry::Spans>>,
    /// Flow gates (`crate::flow`) by handler: what its gates share, and
    /// one gate per channel it reads.
    gates: Mutex<HashMap<String, HandlerGates>>,
}

/// One gate's figures: handler, channel, jobs waiting in it (for a
/// concurrency limit, for a rate limit), jobs turned back (the same).
pub type FlowCensus = (String, String, (usize, usize), (u64, u64));

#[derive(Debug, Default)]
struct HandlerGates {
    shared: Arc<flow::Shared>,
    by_channel: HashMap<String, Arc<Gate>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Control {
    /// A control whose `/metrics` include `runtime`'s sandbox gauges.
    pub fn with_sandbox(runtime: Runtime) -> Control {
        Control {
            sandbox: Some(runtime),
            ..Control::default()
        }
    }

    /// The flow gate of `sub` under `spec` (made on first use; a handler's
    /// gates share its counts). A pump started again under other rules
    /// (review #13) gets a new gate with them; the handler's running counts
    /// and buckets carry over (they are shared), and leases of the old gate
    /// give their places back to the same counts.
    pub fn gate(&self, sub: &Subscription, spec: &FlowSpec) -> Arc<Gate> {
        let mut gates = lock(&self.gates);
        let h = gates.entry(sub.consumer.clone()).or_default();
        let shared = h.shared.clone();
        let gate = h
            .by_channel
            .entry(sub.channel.clone())
            .or_insert_with(|| Gate::new(&sub.consumer, spec.clone(), shared.clone()));
        if gate.spec() != spec {
            *gate = Gate::new(&sub.consumer, spec.clone(), shared);
        }
        gate.clone()
    }

    /// Why a job with this record waits now, if it does: as its handler's
    /// gate on this host sees it (a due, queued job), or as its record
    /// says (JetStream: a job turned back carries the reason).
    pub fn waiting(&self, job: &crate::store::JobRecord) -> Option<String> {
        use crate::store::JobState;
        if !matches!(
            job.state,
            JobState::Queued | JobState::Scheduled | JobState::Retrying
        ) {
            return None;
        }
        let now = crate::message::now_ms();
        let gate = lock(&self.gates)
            .get(&job.consumer)
            .and_then(|h| h.by_channel.get(&job.channel).cloned());
        if let Some(gate) = gate
            && job.visible_at <= now
            && let Some(w) = gate.waiting_reason(&job.headers, job.body.as_bytes(), now)
        {
            return Some(w.to_string());
        }
        job.last_error
            .as_deref()
            .filter(|e| job.state == JobState::Queued && e.starts_with(flow::WAITING_PREFIX))
            .map(str::to_owned)
    }

    /// Every gate: (handler, channel, jobs waiting in it for a concurrency
    /// limit and for a rate limit, jobs turned back for each), for
    /// `/metrics`.
    pub fn flow_census(&self) -> Vec<FlowCensus> {
        let gates = lock(&self.gates);
        let mut out: Vec<_> = gates
            .iter()
            .flat_map(|(handler, h)| {
                h.by_channel.iter().map(move |(channel, g)| {
                    (
                        handler.clone(),
                        channel.clone(),
                        g.waiting_counts(),
                        g.turned_back(),
                    )
                })
            })
            .collect();
        out.sort();
        out
    }

    /// The call budget and instance pool now, if a runtime is attached.
    pub fn sandbox(&self) -> Option<SandboxStats> {
        self.sandbox.as_ref().map(Runtime::sandbox_stats)
    }

    /// Stops the pumps of `channel` fetching; false if it was paused already.
    pub fn pause(&self, channel: &str) -> bool {
        lock(&self.paused).insert(channel.to_owned())
    }

    /// Lets the pumps of `channel` fetch again; false if it was not paused.
    pub fn resume(&self, channel: &str) -> bool {
        lock(&self.paused).remove(channel)
    }

    /// Whether an operator paused `channel`.
    pub fn is_paused(&self, channel: &str) -> bool {
        lock(&self.paused).contains(channel)
    }

    /// Channels paused now, sorted.
    pub fn paused(&self) -> Vec<String> {
        lock(&self.paused).iter().cloned().collect()
    }

    /// From now on, the id of every job whose record changes (started,
    /// outcome committed, cancelled, replayed) is kept in the returned set
    /// until taken.
    pub fn subscribe_changes(&self) -> Arc<Changes> {
        self.changes.on.store(true, Ordering::SeqCst);
        self.changes.clone()
    }

    /// Says the record of `job_id` changed.
    pub fn changed(&self, job_id: &str) {
        self.changes.add(job_id);
    }

    /// Registers a call about to run `job_id` under `token`, until the
    /// returned guard drops.
    pub fn start(&self, job_id: &str, token: &CancellationToken) -> Running<'_> {
        let call = Arc::new(RunningCall {
            token: token.clone(),
            by_operator: AtomicBool::new(false),
        });
        lock(&self.running).insert(job_id.to_owned(), call.clone());
        Running {
            control: self,
            job_id: job_id.to_owned(),
            call,
            _in_flight: self.metrics.call_started(),
        }
    }

    /// An operator's cancel: interrupts the call running `job_id` on this
    /// host. False if no such call runs here.
    pub fn interrupt(&self, job_id: &str) -> bool {
        let Some(call) = lock(&self.running).get(job_id).cloned() else {
            return false;
        };
        call.by_operator.store(true, Ordering::SeqCst);
        call.token.cancel();
        true
    }

    /// Exports spans from now on (`[otel]` configured); only the first
    /// call counts.
    pub fn set_spans(&self, spans: Arc<crate::telemetry::Spans>) {
        let _ = self.spans.set(spans);
    }

    /// The span exporter, if traces are exported.
    pub fn spans(&self) -> Option<&Arc<crate::telemetry::Spans>> {
        self.spans.get()
    }

    /// Whether a call for `job_id` runs on this host now.
    pub fn is_running(&self, job_id: &str) -> bool {
        lock(&self.running).contains_key(job_id)
    }
}

/// A registered running call; unregisters itself when dropped.
pub struct Running<'a> {
    control: &'a Control,
    job_id: String,
    call: Arc<RunningCall>,
    _in_flight: InFlight<'a>,
}

impl Running<'_> {
    /// True when an operator (not shutdown) interrupted this call.
    pub fn cancelled_by_operator(&self) -> bool {
        self.call.by_operator.load(Ordering::SeqCst)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.control.running);
        if map
            .get(&self.job_id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.call))
        {
            map.remove(&self.job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_a_set_kept_until_shared_and_off_until_subscribed() {
        let control = Control::default();
        control.changed("before");
        let changes = control.subscribe_changes();
        assert!(changes.is_empty(), "nobody listened then");
        for id in ["a", "b", "a", "a"] {
            control.changed(id);
        }
        assert_eq!(changes.take(), ["a", "b"], "a job changed twice waits once");
        assert!(changes.is_empty());
        // A write that failed goes back and is taken again.
        changes.put_back(["b".to_owned()]);
        control.changed("c");
        assert_eq!(changes.take(), ["b", "c"]);
    }

    #[test]
    fn interrupt_marks_the_call_and_cancels_its_token() {
        let control = Control::default();
        let token = CancellationToken::new();
        let running = control.start("j1", &token);
        assert!(control.is_running("j1"));
        assert_eq!(control.metrics.in_flight(), 1);
        assert!(!control.interrupt("other"));
        assert!(control.interrupt("j1"));
        assert!(token.is_cancelled());
        assert!(running.cancelled_by_operator());
        drop(running);
        assert!(!control.is_running("j1"));
        assert_eq!(control.metrics.in_flight(), 0);
    }

    #[test]
    fn shutdown_cancel_is_not_an_operator_cancel() {
        let control = Control::default();
        let token = CancellationToken::new();
        let running = control.start("j1", &token);
        token.cancel();
        assert!(!running.cancelled_by_operator());
    }

    #[test]
    fn a_pump_started_again_under_new_rules_gets_them_and_keeps_the_counts() {
        use crate::flow::{Concurrency, KeySource};
        let control = Control::default();
        let sub = Subscription {
            channel: "c".into(),
            consumer: "h".into(),
        };
        let rules = |limit| FlowSpec {
            concurrency: Some(Concurrency {
                key: KeySource::Header("t".into()),
                limit,
            }),
            rate: None,
        };
        let old = control.gate(&sub, &rules(1));
        let running = old.admit("j1", "k".into());
        assert!(Arc::ptr_eq(&old, &control.gate(&sub, &rules(1))));
        let new = control.gate(&sub, &rules(3));
        assert_eq!(new.spec(), &rules(3));
        assert_eq!(new.running("k"), 1, "the running job still counts");
        drop(running);
        assert_eq!(new.running("k"), 0);
    }

    #[test]
    fn pause_and_resume() {
        let control = Control::default();
        assert!(control.pause("a"));
        assert!(!control.pause("a"));
        assert!(control.is_paused("a"));
        assert_eq!(control.paused(), vec!["a".to_owned()]);
        assert!(control.resume("a"));
        assert!(!control.resume("a"));
        assert!(!control.is_paused("a"));
    }
}
