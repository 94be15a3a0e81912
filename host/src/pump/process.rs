//! The life of one delivery in a pump: expiry check, map, handle under the
//! sandbox, then record the outcome (with the call's effects, in one store
//! transaction) and only then settle it on the transport.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Deps;
use super::mapping::{self, MapError};
use super::policy::{Breaker, backoff};
use crate::config::Policy;
use crate::message::now_ms;
use crate::runtime::{CallFailure, JobContext, Outcome, Plugin, StateSource, TrapKind};
use crate::store::{CallRecord, Commit, Finish, FinishResult, Store};
use crate::telemetry::{self, JobSpan, Phase, mark};
use crate::transport::{Delivery, Settle, Subscription, Transport};

/// Committed plugin state, read through the store's thread.
pub struct StoreState(pub Store);

impl StateSource for StoreState {
    fn get(
        &self,
        plugin: &str,
        key: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<(Vec<u8>, i64)>, String>> + Send + '_>> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        Box::pin(async move {
            self.0
                .state_get(&plugin, &key)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// What to record for a finished call and how to settle the delivery.
struct Verdict {
    finish: Finish,
    settle: Settle,
    /// For the log line.
    outcome: &'static str,
    error: Option<String>,
}

pub(super) async fn process<T: Transport>(
    deps: &Deps<T>,
    sub: &Subscription,
    policy: &Policy,
    breaker: &Breaker,
    delivery: Delivery,
    cancel: CancellationToken,
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
        let (plugin, fuel_used, verdict) = decide(
            deps, sub, policy, breaker, &delivery, cancel, &running, &mut clock,
        )
        .await;
        let recorded = commit(deps, &delivery, plugin.as_ref(), fuel_used, verdict).await;
        mark(&mut clock, Phase::Commit);
        (plugin, fuel_used, recorded)
    };
    let (plugin, fuel_used, recorded) = with_heartbeats(&deps.transport, &delivery, work).await;
    if let Some(recorded) = recorded {
        settle(
            deps,
            &delivery,
            plugin.as_ref(),
            fuel_used,
            recorded,
            started,
            clock,
        )
        .await;
    }
}

/// Runs the delivery through expiry, mapping, the handler and the post
/// mapping; says what to record, with the plugin that ran and its fuel.
/// `clock` gets the phases' instants when spans are exported.
#[allow(clippy::too_many_arguments)]
async fn decide<T: Transport>(
    deps: &Deps<T>,
    sub: &Subscription,
    policy: &Policy,
    breaker: &Breaker,
    delivery: &Delivery,
    cancel: CancellationToken,
    running: &super::control::Running<'_>,
    clock: &mut Option<JobSpan>,
) -> (Option<Plugin>, u64, Verdict) {
    let job = &delivery.job;
    let set = deps.registry.current();
    let Some(handler) = set.handlers.get(&sub.consumer).cloned() else {
        return (None, 0, host_fault("handler not loaded".into()));
    };
    mark(clock, Phase::Receive);
    let mut fuel_used = 0;
    let verdict = if job.expires_at.is_some_and(|at| at <= now_ms()) {
        Verdict {
            finish: Finish::Expired,
            settle: Settle::Ack,
            outcome: "expired",
            error: None,
        }
    } else {
        let mapped = mapping::to_request(&set, &job.message, job.attempt).await;
        mark(clock, Phase::Map);
        match mapped {
            Err(MapError::Poison(reason)) => dead(reason, "poison"),
            Err(MapError::Fault(reason)) => failed(policy, breaker, job.attempt, reason),
            Err(MapError::Host(reason)) => host_fault(reason),
            Ok(request) => {
                let ctx = JobContext {
                    job_id: job.job_id.clone(),
                    message_id: job.message.id.clone(),
                    channel: job.message.channel.clone(),
                    attempt: job.attempt,
                    headers: job.message.headers.clone(),
                    cursor: job.cursor.clone(),
                };
                let state: Arc<dyn StateSource> = Arc::new(StoreState(deps.store.clone()));
                let call = handler.handle(ctx, request, state, cancel);
                let report = call.await;
                mark(clock, Phase::Handle);
                fuel_used = report.fuel_used;
                match report.result {
                    Ok(outcome) => {
                        match mapping::to_messages(
                            &set,
                            &report.effects.posts,
                            &job.message,
                            &sub.consumer,
                            job.cursor.as_deref(),
                        )
                        .await
                        .and_then(|mut posts| {
                            // The posts' jobs are children of this one.
                            if !posts.is_empty() {
                                let (_, trace) = telemetry::job_trace(
                                    &job.message.headers,
                                    &job.message.id,
                                    &sub.consumer,
                                    job.cursor.as_deref(),
                                    job.attempt,
                                );
                                telemetry::inherit(&mut posts, &trace);
                            }
                            check_outgoing(&deps.transport, job, &outcome, &posts)?;
                            Ok(posts)
                        }) {
                            Ok(posts) => {
                                breaker.success();
                                let commit = Commit {
                                    progress: report.effects.progress.map(|p| (p.percent, p.note)),
                                    state_plugin: handler.info().name.clone(),
                                    state_reads: report.effects.state_reads,
                                    state_writes: report.effects.state_writes,
                                    posts,
                                };
                                succeeded(outcome, commit)
                            }
                            Err(MapError::Poison(reason)) => dead(reason, "dead"),
                            Err(MapError::Fault(reason)) => {
                                failed(policy, breaker, job.attempt, reason)
                            }
                            Err(MapError::Host(reason)) => host_fault(reason),
                        }
                    }
                    Err(CallFailure::Permanent(m)) => dead(format!("permanent error: {m}"), "dead"),
                    Err(CallFailure::Host(reason)) => host_fault(format!("host error: {reason}")),
                    Err(CallFailure::Trap(TrapKind::Cancelled))
                        if running.cancelled_by_operator() =>
                    {
                        cancelled()
                    }
                    Err(CallFailure::Trap(TrapKind::Cancelled)) => {
                        release("interrupted by shutdown; handed back", Duration::ZERO)
                    }
                    Err(failure) => failed(policy, breaker, job.attempt, failure.to_string()),
                }
            }
        }
    };
    (Some(handler), fuel_used, verdict)
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

/// The host could not run the call (instance pool exhausted, a removed
/// mapper, the state store failing): not the message's fault, so it is
/// handed back without costing an attempt or counting for the breaker.
fn host_fault(reason: String) -> Verdict {
    let mut verdict = release(&reason, HOST_FAULT_RETRY);
    verdict.outcome = "host fault";
    verdict
}

/// How long a job waits after a host fault before it runs again.
const HOST_FAULT_RETRY: Duration = Duration::from_secs(1);

fn succeeded(outcome: Outcome, commit: Commit) -> Verdict {
    match outcome {
        Outcome::Done { result } => Verdict {
            finish: Finish::Succeeded { result, commit },
            settle: Settle::Ack,
            outcome: "succeeded",
            error: None,
        },
        Outcome::Continue { cursor, delay_ms } => Verdict {
            finish: Finish::Continue {
                cursor,
                visible_at: now_ms().saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
                commit,
            },
            settle: Settle::Continue {
                delay: Duration::from_millis(delay_ms),
            },
            outcome: "continued",
            error: None,
        },
    }
}

/// An operator cancelled the job while it ran: recorded as final, and
/// acked so no host runs it again.
fn cancelled() -> Verdict {
    let reason = "cancelled by an operator while running".to_owned();
    Verdict {
        finish: Finish::Cancelled {
            reason: reason.clone(),
        },
        settle: Settle::Ack,
        outcome: "cancelled",
        error: Some(reason),
    }
}

fn dead(reason: String, outcome: &'static str) -> Verdict {
    Verdict {
        finish: Finish::Dead {
            error: reason.clone(),
        },
        settle: Settle::DeadLetter {
            reason: reason.clone(),
        },
        outcome,
        error: Some(reason),
    }
}

/// A retryable failure: retry with backoff, or dead-letter on the last
/// attempt.
fn failed(policy: &Policy, breaker: &Breaker, attempt: u32, reason: String) -> Verdict {
    if breaker.failure() {
        tracing::warn!(cooldown = ?policy.breaker_cooldown, "circuit breaker open: pausing this handler's pump");
    }
    if attempt >= policy.max_attempts {
        return dead(
            format!(
                "{reason} (gave up after {attempt} of {} attempts)",
                policy.max_attempts
            ),
            "dead",
        );
    }
    let delay = backoff(policy, attempt);
    Verdict {
        finish: Finish::Retry {
            error: reason.clone(),
            visible_at: now_ms()
                .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        },
        settle: Settle::Nak { delay },
        outcome: "retrying",
        error: Some(reason),
    }
}

fn release(reason: &str, after: Duration) -> Verdict {
    Verdict {
        finish: Finish::Release {
            visible_at: now_ms()
                .saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX)),
            reason: reason.to_owned(),
        },
        settle: Settle::Nak { delay: after },
        outcome: "released",
        error: Some(reason.to_owned()),
    }
}

/// What the store recorded for a delivery, and how to settle it.
struct Recorded {
    outcome: &'static str,
    settle: Option<Settle>,
    error: Option<String>,
}

/// Commits the verdict. `None` when it could not be recorded: the delivery
/// is left unsettled so it comes back.
async fn commit<T: Transport>(
    deps: &Deps<T>,
    delivery: &Delivery,
    plugin: Option<&Plugin>,
    fuel_used: u64,
    verdict: Verdict,
) -> Option<Recorded> {
    let job = &delivery.job;
    let call = CallRecord {
        plugin_version: plugin.map(|p| p.info().version.clone()),
        plugin_hash: plugin.map(|p| p.hash().to_owned()),
        fuel_used,
    };
    let (outcome, settle) = match deps
        .store
        .finish(&job.job_id, job.attempt, call, verdict.finish)
        .await
    {
        Ok(FinishResult::Committed { .. }) => (verdict.outcome, Some(verdict.settle)),
        Ok(FinishResult::Conflict) => (
            "conflict",
            Some(Settle::Nak {
                delay: Duration::ZERO,
            }),
        ),
        // The job moved on without this delivery (a newer delivery of it is
        // running here, or it was cancelled): settling this one could end
        // the live one (an ack is per message, not per delivery), so it is
        // left to the live delivery, or to the ack wait.
        Ok(FinishResult::Stale) => ("stale", None),
        Err(e) => {
            tracing::error!(job_id = %job.job_id, error = %e, "cannot record job outcome; it will be redelivered");
            return None;
        }
    };
    deps.control.changed(&job.job_id);
    Some(Recorded {
        outcome,
        settle,
        error: verdict.error,
    })
}

/// Settles the delivery as recorded, then logs one line.
async fn settle<T: Transport>(
    deps: &Deps<T>,
    delivery: &Delivery,
    plugin: Option<&Plugin>,
    fuel_used: u64,
    recorded: Recorded,
    started: Instant,
    mut clock: Option<JobSpan>,
) {
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
    deps.control
        .metrics
        .record_job(&job.consumer, outcome, duration_ms / 1000.0, fuel_used);
    deps.control
        .metrics
        .series
        .record(&job.message.channel, outcome, now_ms());
    let version = plugin.map_or("", |p| p.info().version.as_str());
    if let (Some(clock), Some(spans)) = (clock, deps.control.spans()) {
        let error = recorded.error.as_deref().filter(|_| outcome != "succeeded");
        spans.finish_job(clock, job, plugin_name, version, fuel_used, outcome, error);
    }
    match recorded.error {
        Some(error) if outcome != "succeeded" => tracing::warn!(
            job_id = %job.job_id, channel = %job.message.channel, plugin = plugin_name, version,
            attempt = job.attempt, duration_ms, fuel = fuel_used, outcome, %error, "job"
        ),
        _ => tracing::info!(
            job_id = %job.job_id, channel = %job.message.channel, plugin = plugin_name, version,
            attempt = job.attempt, duration_ms, fuel = fuel_used, outcome, "job"
        ),
    }
}
