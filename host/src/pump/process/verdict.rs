//! What a delivery's end is recorded as and how it is settled: one
//! [`Verdict`] per kind of ending (success, retry, dead letter, hand-back,
//! expiry, cancel, host fault).

use std::time::Duration;

use super::super::policy::{Breaker, backoff};
use crate::config::Policy;
use crate::message::now_ms;
use crate::runtime::Outcome;
use crate::store::{Commit, Finish};
use crate::transport::Settle;

/// What to record for a finished call and how to settle the delivery.
pub(super) struct Verdict {
    pub(super) finish: Finish,
    pub(super) settle: Settle,
    /// For the log line.
    pub(super) outcome: &'static str,
    pub(super) error: Option<String>,
}

/// The host could not run the call (instance pool exhausted, a removed
/// mapper, the state store failing): not the message's fault, so it is
/// handed back without costing an attempt or counting for the breaker.
pub(super) fn host_fault(reason: String) -> Verdict {
    let mut verdict = release(&reason, HOST_FAULT_RETRY);
    verdict.outcome = "host fault";
    verdict
}

/// How long a job waits after a host fault before it runs again.
const HOST_FAULT_RETRY: Duration = Duration::from_secs(1);

/// How long a job whose shared state commit the store refused outright
/// (full, an API error) waits before it runs again.
pub(super) const STORE_REFUSED_RETRY: Duration = Duration::from_secs(5);

pub(super) fn succeeded(outcome: Outcome, commit: Commit) -> Verdict {
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

/// The verdict for an expired message: recorded, acked, never run.
pub(super) fn expiry() -> Verdict {
    Verdict {
        finish: Finish::Expired,
        settle: Settle::Ack,
        outcome: "expired",
        error: None,
    }
}

/// An operator cancelled the job while it ran: recorded as final, and
/// acked so no host runs it again.
pub(super) fn cancelled() -> Verdict {
    cancelled_because("cancelled by an operator while running".to_owned())
}

/// A `replace` post of its uniqueness key took the key before the job
/// started (message `by`): recorded as final, acked, never run.
pub(super) fn replaced(by: &str) -> Verdict {
    cancelled_because(format!("replaced by message {by} (unique key)"))
}

fn cancelled_because(reason: String) -> Verdict {
    Verdict {
        finish: Finish::Cancelled {
            reason: reason.clone(),
        },
        settle: Settle::Ack,
        outcome: "cancelled",
        error: Some(reason),
    }
}

pub(super) fn dead(reason: String, outcome: &'static str) -> Verdict {
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
pub(super) fn failed(policy: &Policy, breaker: &Breaker, attempt: u32, reason: String) -> Verdict {
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
        settle: Settle::Retry { delay },
        outcome: "retrying",
        error: Some(reason),
    }
}

pub(super) fn release(reason: &str, after: Duration) -> Verdict {
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
