//! The life of one delivery in a pump: expiry check, map, handle under the
//! sandbox, then record the outcome (with the call's effects, in one store
//! transaction) and only then settle it on the transport.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Deps;
use super::control::Running;
use super::mapping::{self, MapError};
use super::policy::Breaker;

mod shared;
mod verdict;
use crate::config::Policy;
use crate::message::{Request, now_ms};
use crate::registry::PluginSet;
use crate::runtime::{CallFailure, JobContext, Outcome, Plugin, StateSource, TrapKind};
use crate::state::{CallState, HandOff, Handed};
use crate::store::{CallRecord, Commit, Finish, FinishResult, StateCommit};
use crate::telemetry::{self, JobSpan, Phase, mark};
use crate::transport::{Delivery, Settle, Start, Subscription, Transport};
use shared::{SharedCommit, Stale};
use verdict::{
    STORE_REFUSED_RETRY, Verdict, cancelled, dead, expiry, failed, host_fault, release, replaced,
    succeeded,
};

/// Re-runs of one attempt after state conflicts before the job is handed
/// back. Never reached by design (each conflict adds a key the re-run
/// holds, see `crate::state`); a guard against a bug spinning the CPU.
const MAX_RERUNS: u32 = 1000;
/// With shared state, re-runs of one attempt after the store refused its
/// commit (another host changed a key) before the job is handed back,
/// without losing its attempt, to whichever host gets it next: across
/// hosts a re-run holds its keys on its own host only, so it can lose
/// again (see `shared::shared_backoff`).
const MAX_SHARED_RERUNS: u32 = 32;

/// How a delivery's outcome reaches the store.
enum Recording {
    /// Submit this verdict now.
    Submit(Verdict),
    /// The state ledger already handed the commit to the writer, in order.
    Handed {
        handed: Handed,
        settle: Settle,
        outcome: &'static str,
    },
    /// It could not be submitted: leave the delivery to come back.
    Lost(String),
}

/// What the call(s) of one delivery cost.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    fuel: u64,
    /// Re-runs because state changed under the call.
    conflicts: u32,
    /// Of them, shared state: re-runs because another host changed a key
    /// (bounded by [`MAX_SHARED_RERUNS`]).
    lost: u32,
}

pub(super) async fn process<T: Transport>(
    deps: &Deps<T>,
    sub: &Subscription,
    policy: &Policy,
    breaker: &Breaker,
    delivery: Delivery,
    cancel: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    // Phase instants for the job's span; `None` (free) unless exported.
    let mut clock = deps.control.spans().map(|s| s.job());
    let job = &delivery.job;
    // Registered so an operator can interrupt it (DELETE /v1/jobs/{id}).
    let running = deps.control.start(&job.job_id, &cancel);
    deps.control.changed(&job.job_id);
    // Heartbeats cover the whole delivery, not only the call: mapping in,
    // the call, mapping the posts and the commit. A delivery that goes
    // quiet for the ack wait is handed to another host, and a slow commit
    // must not make that happen to a job this host is still finishing.
    let work = async {
        let mut cost = Cost::default();
        let (plugin, recording) = decide(
            deps, sub, policy, breaker, &delivery, cancel, &running, &mut cost, &mut clock,
        )
        .await;
        let slot = keep_slot(deps, slot);
        let recorded = commit(deps, &delivery, plugin.as_ref(), cost, recording).await;
        mark(&mut clock, Phase::Commit);
        (plugin, cost, recorded, slot)
    };
    let (plugin, cost, recorded, _slot) = with_heartbeats(&deps.transport, &delivery, work).await;
    if let Some(recorded) = recorded {
        let times = Times { started, clock };
        settle(deps, &delivery, plugin.as_ref(), cost, recorded, times).await;
    }
}

/// Runs the delivery through expiry, mapping, the handler and the post
/// mapping; says what to record (a verdict, or a commit the state ledger
/// already handed to the writer), with the plugin that ran. `cost` gathers
/// its fuel and state re-runs; `clock` the phases' instants when spans are
/// exported.
#[allow(clippy::too_many_arguments)]
async fn decide<T: Transport>(
    deps: &Deps<T>,
    sub: &Subscription,
    policy: &Policy,
    breaker: &Breaker,
    delivery: &Delivery,
    cancel: CancellationToken,
    running: &Running<'_>,
    cost: &mut Cost,
    clock: &mut Option<JobSpan>,
) -> (Option<Plugin>, Recording) {
    let job = &delivery.job;
    let set = deps.registry.current();
    let Some(handler) = set.handlers.get(&sub.consumer).cloned() else {
        return (
            None,
            Recording::Submit(host_fault("handler not loaded".into())),
        );
    };
    mark(clock, Phase::Receive);
    // Paused while it was fetched (a JetStream pull waits for its first
    // message): it goes back, costing no attempt, and holds its unique key.
    if deps.control.is_paused(&sub.channel) {
        return (
            Some(handler),
            Recording::Submit(release("channel paused; handed back", Duration::ZERO)),
        );
    }
    if let Some(recording) = shared::committed_before(deps, job).await {
        return (Some(handler), recording);
    }
    // A message holding a uniqueness key: marked running now, unless a
    // `replace` post took its key first (JetStream; see `Transport::start`).
    match deps.transport.start(delivery).await {
        Start::Run => {}
        Start::Replaced { by } => return (Some(handler), Recording::Submit(replaced(&by))),
        Start::Fault(e) => {
            let reason = format!("uniqueness key: {e}");
            return (Some(handler), Recording::Submit(host_fault(reason)));
        }
    }
    let recording = if expired(job) {
        Recording::Submit(expiry())
    } else if job.attempt > policy.max_attempts {
        // Every attempt it was allowed ended without an outcome: the host
        // running it died (or lost it) each time. Running it again would
        // only take the next host down.
        Recording::Submit(dead(
            format!(
                "gave up after {} of {} attempts: each ended without an outcome (the host \
                 running it stopped, or lost the delivery)",
                job.attempt - 1,
                policy.max_attempts
            ),
            "dead",
        ))
    } else {
        let mapped = mapping::to_request(&set, &job.message, job.attempt).await;
        mark(clock, Phase::Map);
        match mapped {
            Err(MapError::Poison(reason)) => Recording::Submit(dead(reason, "poison")),
            Err(MapError::Fault(reason)) => {
                Recording::Submit(failed(policy, breaker, job.attempt, reason))
            }
            Err(MapError::Host(reason)) => Recording::Submit(host_fault(reason)),
            Ok(request) => {
                let call = Call {
                    deps,
                    sub,
                    policy,
                    breaker,
                    delivery,
                    set: &set,
                    handler: &handler,
                    running,
                };
                call.run(request, &cancel, cost, clock).await
            }
        }
    };
    (Some(handler), recording)
}

/// One delivery's handler call(s) and what they need.
struct Call<'a, T> {
    deps: &'a Deps<T>,
    sub: &'a Subscription,
    policy: &'a Policy,
    breaker: &'a Breaker,
    delivery: &'a Delivery,
    set: &'a PluginSet,
    handler: &'a Plugin,
    running: &'a Running<'a>,
}

impl<T: Transport> Call<'_, T> {
    /// Runs the handler and hands a success's commit to the state ledger.
    /// A commit that met state another job changed runs the call again,
    /// first taking the turns of every key it touched (so it cannot meet
    /// them changed again); that costs no attempt. In the job's span the
    /// `handle` phase covers every run (and the waits for turns between
    /// them); each re-run is a `state conflict` event on it.
    async fn run(
        &self,
        request: Request,
        cancel: &CancellationToken,
        cost: &mut Cost,
        clock: &mut Option<JobSpan>,
    ) -> Recording {
        let job = &self.delivery.job;
        let plugin = &self.handler.info().name;
        let session = self.deps.state.session(plugin);
        // A hot key: wait for its turn before the sandbox starts, not in it.
        let mut hold: Vec<String> = self.deps.state.hot_key(plugin).into_iter().collect();
        loop {
            if !hold.is_empty() {
                session.release_all();
                tokio::select! {
                    () = session.acquire(&hold) => {}
                    () = cancel.cancelled() => return Recording::Submit(self.interrupted()),
                }
                // The wait may have outlasted the message's life.
                if expired(job) {
                    return Recording::Submit(expiry());
                }
            }
            let ctx = JobContext {
                job_id: job.job_id.clone(),
                message_id: job.message.id.clone(),
                channel: job.message.channel.clone(),
                attempt: job.attempt,
                headers: job.message.headers.clone(),
                cursor: job.cursor.clone(),
            };
            let source: Arc<dyn StateSource> = session.clone();
            let report = self
                .handler
                .handle(ctx, request.clone(), source, cancel.clone())
                .await;
            cost.fuel += report.fuel_used;
            mark(clock, Phase::Handle);
            let outcome = match report.result {
                Ok(outcome) => outcome,
                Err(CallFailure::StateWait { key }) => {
                    // Another job holds a key it read (nobody waits for a
                    // turn in a sandbox), or the read outlasted the call's
                    // time: run again, taking the turns first, outside
                    // the sandbox.
                    cost.conflicts += 1;
                    telemetry::conflict(clock, cost.conflicts);
                    if cost.conflicts >= MAX_RERUNS {
                        return Recording::Submit(host_fault(
                            "its state reads kept waiting; handed back".into(),
                        ));
                    }
                    hold = session.touched();
                    hold.push(key);
                    continue;
                }
                Err(failure) => {
                    // With shared state the failure may have been decided
                    // on a value another host has changed since: checked
                    // before it is recorded (a re-run if so).
                    let read = CallState {
                        reads: report.effects.state_reads,
                        ..CallState::default()
                    };
                    let decided = !matches!(
                        failure,
                        CallFailure::Host(_) | CallFailure::Trap(TrapKind::Cancelled)
                    );
                    if decided {
                        match self.stale(&session, &read, cancel, cost, clock).await {
                            Stale::No => {}
                            Stale::Rerun(keys) => {
                                hold = keys;
                                continue;
                            }
                            Stale::Record(recording) => return recording,
                        }
                    }
                    return Recording::Submit(self.failure(failure));
                }
            };
            let state = CallState {
                reads: report.effects.state_reads,
                writes: report.effects.state_writes,
                adds: report.effects.state_adds,
            };
            let posts = mapping::to_messages(
                self.set,
                &report.effects.posts,
                &job.message,
                &self.sub.consumer,
                job.cursor.as_deref(),
            )
            .await
            .and_then(|mut posts| {
                // The posts' jobs are children of this one.
                if !posts.is_empty() {
                    let (_, trace) = telemetry::job_trace(
                        &job.message.headers,
                        &job.message.id,
                        &self.sub.consumer,
                        job.cursor.as_deref(),
                        job.attempt,
                    );
                    telemetry::inherit(&mut posts, &trace);
                }
                check_outgoing(&self.deps.transport, job, &outcome, &posts)?;
                Ok(posts)
            });
            let posts = match posts {
                Ok(posts) => posts,
                Err(MapError::Host(reason)) => return Recording::Submit(host_fault(reason)),
                Err(e) => {
                    // The posts came from the call, which read state: as
                    // for a failed call, checked first.
                    match self.stale(&session, &state, cancel, cost, clock).await {
                        Stale::No => {}
                        Stale::Rerun(keys) => {
                            hold = keys;
                            continue;
                        }
                        Stale::Record(recording) => return recording,
                    }
                    return Recording::Submit(match e {
                        MapError::Poison(reason) => dead(reason, "dead"),
                        MapError::Fault(reason) | MapError::Host(reason) => {
                            failed(self.policy, self.breaker, job.attempt, reason)
                        }
                    });
                }
            };
            self.breaker.success();
            let commit = Commit {
                progress: report.effects.progress.map(|p| (p.percent, p.note)),
                state: StateCommit::default(),
                posts,
            };
            let Verdict {
                finish,
                settle,
                outcome,
                ..
            } = succeeded(outcome, commit);
            let handoff = if self.deps.state.is_shared() {
                let verdict = Verdict {
                    finish,
                    settle,
                    outcome,
                    error: None,
                };
                match self
                    .commit_shared(&session, &state, verdict, cancel, cost, clock)
                    .await
                {
                    SharedCommit::Record(recording) => return recording,
                    SharedCommit::Rerun(keys) => {
                        hold = keys;
                        continue;
                    }
                    SharedCommit::Failed(handoff) => handoff,
                }
            } else {
                let record = call_record(Some(self.handler), *cost);
                let store = &self.deps.store;
                let submit = |state| {
                    store.submit_finish(&job.job_id, job.attempt, record, with_state(finish, state))
                };
                match session.commit(state, submit).await {
                    Ok(handed) => {
                        return Recording::Handed {
                            handed,
                            settle,
                            outcome,
                        };
                    }
                    Err(e) => e,
                }
            };
            match handoff {
                HandOff::Conflict { keys } => {
                    cost.conflicts += 1;
                    telemetry::conflict(clock, cost.conflicts);
                    if cost.conflicts >= MAX_RERUNS {
                        tracing::error!(job_id = %job.job_id, conflicts = cost.conflicts, "state conflicts do not end (a bug); handing the job back");
                        return Recording::Submit(release(
                            "state conflicts did not end; handed back",
                            Duration::from_secs(1),
                        ));
                    }
                    hold = keys;
                }
                HandOff::Invalid(reason) => {
                    return Recording::Submit(dead(reason, "dead"));
                }
                HandOff::Store(e) => return Recording::Lost(e.to_string()),
                // The batch may have been stored: the delivery comes back
                // (to any host), which finds the marker if it was.
                HandOff::Remote(e) => return Recording::Lost(format!("shared state store: {e}")),
                // Nothing was stored: run it again later, at no attempt's
                // cost (a full disk must not dead-letter every job).
                HandOff::Unavailable(e) => {
                    let mut verdict = release(
                        &format!(
                            "the shared state store refused its commit ({e}); run again later"
                        ),
                        STORE_REFUSED_RETRY,
                    );
                    verdict.outcome = "host fault";
                    return Recording::Submit(verdict);
                }
            }
        }
    }

    /// The verdict for a call that failed.
    fn failure(&self, failure: CallFailure) -> Verdict {
        match failure {
            CallFailure::Permanent(m) => dead(format!("permanent error: {m}"), "dead"),
            CallFailure::Host(reason) => host_fault(format!("host error: {reason}")),
            CallFailure::Trap(TrapKind::Cancelled) => self.interrupted(),
            failure => failed(
                self.policy,
                self.breaker,
                self.delivery.job.attempt,
                failure.to_string(),
            ),
        }
    }

    /// Stopped by an operator (recorded as final) or by shutdown (handed
    /// back).
    fn interrupted(&self) -> Verdict {
        if self.running.cancelled_by_operator() {
            cancelled()
        } else {
            release("interrupted by shutdown; handed back", Duration::ZERO)
        }
    }
}

/// `finish` with the state commit the ledger versioned.
fn with_state(finish: Finish, state: StateCommit) -> Finish {
    match finish {
        Finish::Succeeded { result, mut commit } => {
            commit.state = state;
            Finish::Succeeded { result, commit }
        }
        Finish::Continue {
            cursor,
            visible_at,
            mut commit,
        } => {
            commit.state = state;
            Finish::Continue {
                cursor,
                visible_at,
                commit,
            }
        }
        other => other,
    }
}

fn call_record(plugin: Option<&Plugin>, cost: Cost) -> CallRecord {
    CallRecord {
        plugin_version: plugin.map(|p| p.info().version.clone()),
        plugin_hash: plugin.map(|p| p.hash().to_owned()),
        fuel_used: cost.fuel,
        conflicts: cost.conflicts,
    }
}

/// The call is over: the slot is kept until the delivery is settled, or
/// freed now where the transport allows it.
fn keep_slot<T: Transport>(
    deps: &Deps<T>,
    slot: OwnedSemaphorePermit,
) -> Option<OwnedSemaphorePermit> {
    deps.transport.slot_until_settled().then_some(slot)
}

/// Runs `call`, telling the transport every `heartbeat_every` that the
/// delivery is still being worked on (Turnout's check-ins), so a long job is
/// not handed to another host while this one is alive. If this host dies the
/// heartbeats stop and the transport redelivers after its ack wait.
async fn with_heartbeats<T: Transport, F: std::future::Future>(
    transport: &T,
    delivery: &Delivery,
    call: F,
) -> F::Output {
    let Some(every) = transport.heartbeat_every() else {
        return call.await;
    };
    tokio::pin!(call);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut call => return out,
            _ = ticks.tick() => transport.in_progress(delivery).await,
        }
    }
}

/// Refuses, before anything commits, a post or next slice the transport
/// could never deliver (on JetStream: over the server's `max_payload`, or
/// a header NATS cannot carry): the call's outcome is permanent.
fn check_outgoing<T: Transport>(
    transport: &T,
    job: &crate::store::ClaimedJob,
    outcome: &Outcome,
    posts: &[crate::store::NewMessage],
) -> Result<(), MapError> {
    for (index, post) in posts.iter().enumerate() {
        transport.check_message(post, None).map_err(|reason| {
            MapError::Poison(format!(
                "post #{index} to {} cannot be sent: {reason}",
                post.message.channel
            ))
        })?;
    }
    if let Outcome::Continue { cursor, .. } = outcome {
        let next = crate::store::NewMessage {
            message: crate::store::next_slice(&job.message, cursor, u32::MAX),
            visible_at: 0,
            expires_at: job.expires_at,
        };
        transport
            .check_message(&next, Some(&job.consumer))
            .map_err(|reason| {
                MapError::Poison(format!(
                    "the next slice (cursor of {} bytes) cannot be sent: {reason}",
                    cursor.len()
                ))
            })?;
    }
    Ok(())
}

/// Whether the job's message expired (`expires_at` passed).
fn expired(job: &crate::store::ClaimedJob) -> bool {
    job.expires_at.is_some_and(|at| at <= now_ms())
}

/// What the store recorded for a delivery, and how to settle it.
struct Recorded {
    outcome: &'static str,
    settle: Option<Settle>,
    error: Option<String>,
    /// State re-runs, counting a conflict at the writer.
    conflicts: u32,
}

/// Commits the verdict, or waits for the writer's answer to a commit the
/// state ledger handed over. `None` when it could not be recorded: the
/// delivery is left unsettled so it comes back.
async fn commit<T: Transport>(
    deps: &Deps<T>,
    delivery: &Delivery,
    plugin: Option<&Plugin>,
    cost: Cost,
    recording: Recording,
) -> Option<Recorded> {
    let job = &delivery.job;
    let (result, settle, outcome, error) = match recording {
        Recording::Submit(v) => {
            let call = call_record(plugin, cost);
            let result = deps
                .store
                .finish(&job.job_id, job.attempt, call, v.finish)
                .await;
            (result, v.settle, v.outcome, v.error)
        }
        Recording::Handed {
            handed,
            settle,
            outcome,
        } => (handed.finish().await, settle, outcome, None),
        Recording::Lost(e) => {
            lost(deps, job, &e).await;
            return None;
        }
    };
    let mut conflicts = cost.conflicts;
    let (outcome, settle) = match result {
        Ok(FinishResult::Committed { .. }) => (outcome, Some(settle)),
        Ok(FinishResult::Conflict) => {
            conflicts += 1;
            (
                "conflict",
                Some(Settle::Nak {
                    delay: Duration::ZERO,
                }),
            )
        }
        // The job moved on without this delivery (a newer delivery of it is
        // running here, or it was cancelled): settling this one could end
        // the live one (an ack is per message, not per delivery), so it is
        // left to the live delivery, or to the ack wait.
        Ok(FinishResult::Stale) => ("stale", None),
        Err(e) => {
            lost(deps, job, &e.to_string()).await;
            return None;
        }
    };
    deps.control.changed(&job.job_id);
    Some(Recorded {
        outcome,
        settle,
        error,
        conflicts,
    })
}

/// A delivery whose outcome could not be recorded (the store failed, or
/// a shared state batch got no answer): it is left unsettled, so it comes
/// back after the ack wait, to any host. Its record goes back to waiting
/// (the attempt not charged) while the store can still write: left
/// `running`, it would stay so for good here once another host took the
/// job, since only waiting records are reconciled with what other hosts
/// share.
async fn lost<T: Transport>(deps: &Deps<T>, job: &crate::store::ClaimedJob, reason: &str) {
    tracing::error!(job_id = %job.job_id, error = %reason, "cannot record job outcome; it will be redelivered");
    let back = Finish::Release {
        visible_at: now_ms().saturating_add(1000),
        reason: format!("its outcome could not be recorded ({reason}); it is delivered again"),
    };
    match deps
        .store
        .finish(&job.job_id, job.attempt, CallRecord::default(), back)
        .await
    {
        Ok(_) => deps.control.changed(&job.job_id),
        Err(e) => {
            tracing::warn!(job_id = %job.job_id, error = %e, "cannot put the job back to waiting either; its record here stays running until it is delivered here again or the host restarts");
        }
    }
}

/// When a delivery started, and its phases' instants if spans are exported.
struct Times {
    started: Instant,
    clock: Option<JobSpan>,
}

/// Settles the delivery as recorded, then logs one line (and exports its
/// span, when spans are exported).
async fn settle<T: Transport>(
    deps: &Deps<T>,
    delivery: &Delivery,
    plugin: Option<&Plugin>,
    cost: Cost,
    recorded: Recorded,
    times: Times,
) {
    let Times { started, mut clock } = times;
    let job = &delivery.job;
    let outcome = recorded.outcome;
    if let Some(settle) = recorded.settle
        && let Err(e) = deps.transport.settle(delivery, settle).await
    {
        tracing::warn!(job_id = %job.job_id, error = %e, "settle failed; the message may be delivered again (the store keeps it exactly-once)");
    }
    mark(&mut clock, Phase::Settle);
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let plugin_name = plugin.map_or("", |p| p.info().name.as_str());
    let fuel_used = cost.fuel;
    let conflicts = recorded.conflicts;
    let metrics = &deps.control.metrics;
    metrics.record_job(&job.consumer, outcome, duration_ms / 1000.0, fuel_used);
    metrics.record_conflicts(&job.consumer, conflicts);
    metrics
        .series
        .record(&job.message.channel, outcome, now_ms());
    let version = plugin.map_or("", |p| p.info().version.as_str());
    if let (Some(clock), Some(spans)) = (clock, deps.control.spans()) {
        let error = recorded.error.as_deref().filter(|_| outcome != "succeeded");
        let cost = telemetry::JobCost {
            fuel: fuel_used,
            conflicts,
        };
        spans.finish_job(clock, job, plugin_name, version, cost, outcome, error);
    }
    match recorded.error {
        Some(error) if outcome != "succeeded" => tracing::warn!(
            job_id = %job.job_id, channel = %job.message.channel, plugin = plugin_name, version,
            attempt = job.attempt, duration_ms, fuel = fuel_used, conflicts, outcome, %error, "job"
        ),
        _ => tracing::info!(
            job_id = %job.job_id, channel = %job.message.channel, plugin = plugin_name, version,
            attempt = job.attempt, duration_ms, fuel = fuel_used, conflicts, outcome, "job"
        ),
    }
}
