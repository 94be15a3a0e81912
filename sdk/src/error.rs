//! The error a handler returns.

use std::fmt;

/// Why a handler call failed, and whether trying again could help.
///
/// Errors are data, not traps: returning one lets the host record the reason
/// and choose between a retry (with backoff) and the dead-letter queue. A
/// panic, by contrast, kills the instance and only tells the host "it
/// trapped".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    retryable: bool,
    message: String,
}

impl Error {
    /// A failure worth another attempt, e.g. a dependency that was briefly
    /// unavailable. The host retries with backoff until the attempts run out.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    /// A failure retrying cannot fix, e.g. a request that makes no sense. The
    /// message goes to the dead letters at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }

    /// Whether the host should try again.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The reason, as recorded by the host.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable {
            "retryable"
        } else {
            "permanent"
        };
        write!(f, "{kind} error: {}", self.message)
    }
}

impl std::error::Error for Error {}

/// JSON that does not (de)serialise will not do so on the next attempt
/// either, so the conversion is permanent. This is what makes `?` work on
/// `serde_json` calls and on [`Context::post`](crate::Context::post).
impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::permanent(format!("JSON error: {error}"))
    }
}
