//! Row types: a job's life as the store records it.

use serde::{Deserialize, Serialize};

use crate::message::Message;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Waiting for its launch time (a delay, or the next slice of a job that
    /// returned `continue`).
    Scheduled,
    /// A worker has it.
    Running,
    /// Done; its effects are committed.
    Succeeded,
    /// Failed, waiting for its next attempt.
    Retrying,
    /// Gave up: a dead letter, kept until replayed or purged.
    Dead,
    /// Cancelled by an operator.
    Cancelled,
    /// Not started before its expiry time.
    Expired,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Succeeded,
        JobState::Retrying,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Expired,
    ];

    /// The lowercase name stored in rows and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Retrying => "retrying",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    /// Parses [`JobState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job a worker has claimed: the message plus what the pump needs.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job.
    pub job_id: String,
    /// The handler plugin it is for.
    pub consumer: String,
    /// Its message.
    pub message: Message,
    /// This attempt's number, 1-based.
    pub attempt: u32,
    /// Set when continuing after `continue`.
    pub cursor: Option<String>,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
}

/// Everything the store knows about one job, for `sluice job(s)` and the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// Message id.
    pub message_id: String,
    /// Channel.
    pub channel: String,
    /// Handler plugin name; empty while no handler is known for the channel.
    pub consumer: String,
    /// command | event.
    pub kind: String,
    /// Message headers.
    pub headers: Vec<(String, String)>,
    /// Message body (lossy UTF-8).
    pub body: String,
    /// Life state.
    pub state: JobState,
    /// Attempts at the current slice.
    pub attempts: u32,
    /// Continuation slices committed so far.
    pub slices: u32,
    /// Unix ms from which it may run.
    pub visible_at: i64,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
    /// Where the next slice starts.
    pub cursor: Option<String>,
    /// Last progress, 0..=100.
    pub progress: Option<u8>,
    /// Note with the last progress.
    pub progress_note: Option<String>,
    /// The handler's result.
    pub result: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Version of the plugin that last ran it.
    pub plugin_version: Option<String>,
    /// Content hash of the plugin that last ran it.
    pub plugin_hash: Option<String>,
    /// Fuel used, summed over every call.
    pub fuel_used: u64,
    /// Times replayed from the dead letters.
    pub replays: u32,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the first start.
    pub started_at: Option<i64>,
    /// Unix ms of the end.
    pub finished_at: Option<i64>,
    /// Unix ms of the last change.
    pub updated_at: i64,
    /// Times its commit met state another job had changed, so that the call
    /// ran again (summed over attempts).
    #[serde(default)]
    pub conflicts: u32,
}
