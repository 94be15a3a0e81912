//! The shared-state side of a delivery's call(s) (`[nats] shared_state`):
//! a job committed before is recorded from its commit marker, a success
//! commits with its marker, a failure is checked against the store before
//! it is recorded, and a re-run after another host changed a key pauses
//! first (see `crate::state`'s `remote.rs` and ARCHITECTURE.md).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::super::{Deps, marker};
use super::verdict::{Verdict, host_fault, release};
use super::{Call, Cost, MAX_SHARED_RERUNS, Recording};
use crate::state::{CallState, HandOff, RemoteCommitted, Session};
use crate::store::ClaimedJob;
use crate::telemetry::{self, JobSpan};
use crate::transport::Transport;

/// With shared state, a job committed before (by any host: the delivery
/// came back after a crash, or a slow host's was handed on) is recorded
/// from its marker, never run again: `Some` is what to record (the
/// marker's outcome, or a host fault when the store cannot be read).
pub(super) async fn committed_before<T: Transport>(
    deps: &Deps<T>,
    job: &ClaimedJob,
) -> Option<Recording> {
    if !deps.state.is_shared() {
        return None;
    }
    match deps.state.marker(&marker::commit_name(job)).await {
        Ok(Some(body)) => Some(from_marker(&body)),
        Ok(None) => None,
        Err(e) => Some(Recording::Submit(host_fault(format!(
            "shared state store: {e}"
        )))),
    }
}

/// What to record for a job whose commit marker exists: its outcome and
/// posts as committed.
fn from_marker(body: &[u8]) -> Recording {
    match marker::decode(body) {
        Ok((finish, settle)) => Recording::Submit(Verdict {
            finish,
            settle,
            outcome: "succeeded",
            error: None,
        }),
        Err(e) => Recording::Submit(host_fault(e)),
    }
}

/// What [`Call::commit_shared`] came to.
pub(super) enum SharedCommit {
    /// Record this.
    Record(Recording),
    /// Another host changed a key: run again, first taking these keys'
    /// turns.
    Rerun(Vec<String>),
    /// It could not commit (the caller decides what that costs).
    Failed(HandOff),
}

/// What [`Call::stale`] found.
pub(super) enum Stale {
    /// The reads were current: record the failure.
    No,
    /// Run again, first taking these keys' turns.
    Rerun(Vec<String>),
    /// Record this instead.
    Record(Recording),
}

impl<T: Transport> Call<'_, T> {
    /// With shared state, a success: its state changes, the checks of
    /// what it read and its marker go to the store as one batch
    /// (`state/remote.rs`); `verdict` is recorded once they are stored. A
    /// call that touched no state has nothing another host could disagree
    /// with and is recorded as it is.
    pub(super) async fn commit_shared(
        &self,
        session: &Session,
        state: &CallState,
        verdict: Verdict,
        cancel: &CancellationToken,
        cost: &mut Cost,
        clock: &mut Option<JobSpan>,
    ) -> SharedCommit {
        if state.is_empty() {
            return SharedCommit::Record(Recording::Submit(verdict));
        }
        let Some(body) = marker::encode(&verdict.finish) else {
            return SharedCommit::Record(Recording::Submit(host_fault(
                "no commit marker for a success".into(),
            )));
        };
        let name = marker::commit_name(&self.delivery.job);
        match session.commit_remote(state, &name, body).await {
            Ok(RemoteCommitted::Stored) => SharedCommit::Record(Recording::Submit(verdict)),
            Ok(RemoteCommitted::Already(body)) => SharedCommit::Record(from_marker(&body)),
            Err(HandOff::Conflict { keys }) => {
                match self
                    .lost_to_another_host(session, cancel, cost, clock)
                    .await
                {
                    Some(recording) => SharedCommit::Record(recording),
                    None => SharedCommit::Rerun(keys),
                }
            }
            Err(e) => SharedCommit::Failed(e),
        }
    }

    /// With shared state, before a failure (a failed call, posts that
    /// cannot be mapped) is recorded: whether the reads it was decided on
    /// were stale (see `state/remote.rs`), and whether another host
    /// committed the job meanwhile (a slow host's delivery handed on: the
    /// marker is the outcome, not this failure).
    pub(super) async fn stale(
        &self,
        session: &Session,
        state: &CallState,
        cancel: &CancellationToken,
        cost: &mut Cost,
        clock: &mut Option<JobSpan>,
    ) -> Stale {
        if !self.deps.state.is_shared() {
            return Stale::No;
        }
        match session.check_reads(state).await {
            Ok(()) => {
                let name = marker::commit_name(&self.delivery.job);
                match self.deps.state.marker(&name).await {
                    Ok(None) => Stale::No,
                    Ok(Some(body)) => Stale::Record(from_marker(&body)),
                    Err(e) => Stale::Record(Recording::Submit(host_fault(format!(
                        "shared state store: cannot look for the commit marker of a failed call: {e}"
                    )))),
                }
            }
            Err(HandOff::Conflict { keys }) => {
                match self
                    .lost_to_another_host(session, cancel, cost, clock)
                    .await
                {
                    Some(recording) => Stale::Record(recording),
                    None => Stale::Rerun(keys),
                }
            }
            Err(e) => Stale::Record(Recording::Submit(host_fault(format!(
                "shared state store: cannot check the reads of a failed call: {e:?}"
            )))),
        }
    }

    /// Another host changed a key this call read: counts the re-run and
    /// pauses before it, holding nothing (so that host, and the jobs
    /// chained behind it, move on first); `Some`: what to record instead
    /// (handed back after too many, or interrupted meanwhile).
    pub(super) async fn lost_to_another_host(
        &self,
        session: &Session,
        cancel: &CancellationToken,
        cost: &mut Cost,
        clock: &mut Option<JobSpan>,
    ) -> Option<Recording> {
        cost.conflicts += 1;
        cost.lost += 1;
        telemetry::conflict(clock, cost.conflicts);
        if cost.lost >= MAX_SHARED_RERUNS {
            return Some(Recording::Submit(release(
                "shared state: other hosts kept changing its keys; handed back",
                shared_backoff(cost.lost),
            )));
        }
        session.release_all();
        tokio::select! {
            () = tokio::time::sleep(shared_backoff(cost.lost)) => None,
            () = cancel.cancelled() => Some(Recording::Submit(self.interrupted())),
        }
    }
}

/// The pause before the `n`th re-run of a job whose shared state commit
/// lost to another host: doubling from 1 ms up to 64 ms, a random point in
/// its upper half (so the hosts that lost together do not retry together).
fn shared_backoff(n: u32) -> Duration {
    let ceiling = Duration::from_millis(1 << n.saturating_sub(1).min(6));
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}
