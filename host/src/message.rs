//! The words every module shares: messages on channels, the requests mappers
//! make of them, and the ids that tie a message to its job.
//!
//! These are plain data. `runtime` turns them into WIT values, `store` into
//! rows, `transport` into wire frames; none of those details leak back here.

use serde::{Deserialize, Serialize};

/// Header a producer may set to name the request type; the JSON passthrough
/// mapper uses it, and falls back to the channel name.
pub const REQUEST_NAME_HEADER: &str = "sluice-request";

/// Header on a continuation: where the next slice starts.
pub const CURSOR_HEADER: &str = "sluice-cursor";

/// Header on a continuation: the number of the slice it starts (the original
/// message is slice 0). Lets a host tell a fresh continuation from a stale
/// redelivery of a slice that was already committed.
pub const SLICE_HEADER: &str = "sluice-slice";

/// A command has exactly one handler; an event may have several, each of
/// which gets its own copy (Brighter's recipient list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Exactly one handler.
    #[default]
    Command,
    /// Any number of handlers, each with its own copy.
    Event,
}

impl MessageKind {
    /// The lowercase name used in SQL rows, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
        }
    }

    /// Parses [`MessageKind::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "command" => Some(MessageKind::Command),
            "event" => Some(MessageKind::Event),
            _ => None,
        }
    }
}

/// Ordered headers; keys may repeat.
pub type Headers = Vec<(String, String)>;

/// A message as it travels on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique per message; producers may choose it (idempotent posts).
    pub id: String,
    /// The channel it was posted to.
    pub channel: String,
    /// Command or event.
    pub kind: MessageKind,
    /// Free-form headers.
    pub headers: Headers,
    /// Opaque bytes; JSON unless the channel's mapper says otherwise.
    pub body: Vec<u8>,
}

impl Message {
    /// The first value of header `key`, if any.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a mapper makes of a message and a handler receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The request type's name.
    pub name: String,
    /// JSON text.
    pub body: String,
}

/// A message body and headers as a mapper produces them from a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Headers to put on the wire message.
    pub headers: Headers,
    /// Wire body.
    pub body: Vec<u8>,
}

/// A new, time-ordered unique id (UUID v7) for messages and jobs.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch, the one time unit stored anywhere.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
