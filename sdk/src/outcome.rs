//! What a successful handler call answers.

use std::time::Duration;

use serde::Serialize;

use crate::Error;

/// A successful call: either the job is finished, or there is more to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished, with an optional result (JSON by convention) that the host
    /// records on the job.
    Done(Option<String>),
    /// Not finished. The host commits this call's effects (posts, state,
    /// progress), records `cursor` and calls the handler again after
    /// `delay` with [`Context::cursor`](crate::Context::cursor) set to it.
    /// This keeps each call short, so long jobs fit the per-call limits and a
    /// crash only loses the current slice.
    Continue {
        /// Where to resume; opaque to the host.
        cursor: String,
        /// How long to wait before the next call (millisecond precision).
        delay: Duration,
    },
}

impl Outcome {
    /// Finished, with no result.
    pub fn done() -> Self {
        Self::Done(None)
    }

    /// Finished, with `result` serialised to JSON as the job's result.
    pub fn done_with<T: Serialize + ?Sized>(result: &T) -> Result<Self, Error> {
        Ok(Self::Done(Some(serde_json::to_string(result)?)))
    }

    /// Not finished: call again with `cursor` after `delay`.
    pub fn continue_at(cursor: impl Into<String>, delay: Duration) -> Self {
        Self::Continue {
            cursor: cursor.into(),
            delay,
        }
    }
}
