//! A host's records of jobs that other hosts carried on.
//!
//! On JetStream a job can leave this host without ending here: a retry, a
//! next slice or a hand-back is a message any host may take. Its record
//! here stays `retrying`, `scheduled` or `queued`. Every few seconds this
//! task pages through those records (an index range, a page per state per
//! pass) and, for each that is due and has not changed here for a while,
//! reads the status board: if another host shared a final status for the
//! same life of the job (same replay count; a final status ends a life,
//! only a replay starts another), the record takes it. A job still in flight elsewhere stays as it is
//! until it ends.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::StatusBoard;
use crate::api::is_final;
use crate::message::now_ms;
use crate::store::{EndedElsewhere, JobState, Store};

/// Time between passes.
const EVERY: Duration = Duration::from_secs(2);
/// Records per state looked at per pass.
const PAGE: usize = 200;
/// How long a record must have been quiet (and due) before the board is
/// asked about it.
const QUIET_MS: i64 = 1000;

/// Runs passes until `stop`.
pub async fn reconcile(board: StatusBoard, store: Store, stop: CancellationToken) {
    let states = [JobState::Queued, JobState::Scheduled, JobState::Retrying];
    let mut cursors: [Option<(String, i64, String)>; 3] = Default::default();
    loop {
        for (state, cursor) in states.iter().zip(cursors.iter_mut()) {
            let page = match store.waiting_page(*state, cursor.clone(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling job records: cannot read the store");
                    break;
                }
            };
            // A short page is the end of the range: start again next pass.
            *cursor = (page.len() == PAGE)
                .then(|| page.last())
                .flatten()
                .map(|w| (w.channel.clone(), w.created_at, w.id.clone()));
            let now = now_ms();
            for waiting in page {
                if stop.is_cancelled() {
                    return;
                }
                if waiting.visible_at > now - QUIET_MS || waiting.updated_at > now - QUIET_MS {
                    continue;
                }
                let Some(view) = board.get(&waiting.id).await else {
                    continue;
                };
                // A final status of the same life (replay count) is taken
                // even if this record changed after it: that change was a
                // stale redelivery run here after the job had ended.
                if !is_final(view.state) || view.replays != waiting.replays {
                    continue;
                }
                let ended = EndedElsewhere {
                    state: view.state,
                    result: view.result.clone(),
                    last_error: view.last_error.clone(),
                    finished_at: view.finished_at.unwrap_or(view.updated_at),
                };
                match store
                    .ended_elsewhere(&waiting.id, waiting.updated_at, ended)
                    .await
                {
                    Ok(true) => {
                        tracing::debug!(job_id = %waiting.id, state = %view.state, "job ended on another host; recorded here");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %waiting.id, error = %e, "cannot record a job's end from another host")
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}
