//! The words every module shares: messages on channels, the requests mappers
//! make of them, and the ids that tie a message to its job.
//!
//! These are plain data. `runtime` turns them into WIT values, `store` into
//! rows, `transport` into wire frames; none of those details leak back here.

use serde::{Deserialize, Serialize};

pub mod options;

/// Header a producer may set to name the request type; the JSON passthrough
/// mapper uses it, and falls back to the channel name.
pub const REQUEST_NAME_HEADER: &str = "sluice-request";

/// Header on a continuation: where the next slice starts.
pub const CURSOR_HEADER: &str = "sluice-cursor";

/// Header on a continuation: the number of the slice it starts (the original
/// message is slice 0). Lets a host tell a fresh continuation from a stale
/// redelivery of a slice that was already committed.
pub const SLICE_HEADER: &str = "sluice-slice";

/// Header on a retry message (JetStream): how many attempts the job had
/// made when it was sent, so attempts count across hosts.
pub const ATTEMPT_HEADER: &str = "sluice-attempt";

/// Header on a message addressed to a job's handler (a replay, and the
/// retries and next slices after it) saying which life of the job it
/// belongs to: the job's `replays` when it was sent. A host whose record of
/// the job is final from an earlier life starts the new one instead of
/// taking the message for a redelivery of what it finished.
pub const REPLAY_HEADER: &str = "sluice-replay";

/// Longest header name accepted, in bytes.
pub const MAX_HEADER_NAME: usize = 256;

/// Checks one header a producer (a guest's `post`, `sluice post --header`,
/// a mapper's output) wants on a message, so that it can travel on any
/// transport: NATS header names are visible ASCII without `:` (no spaces,
/// no control characters) and values have no CR or LF, and the names
/// Sluice and NATS use for their own fields (`Nats-*`, and `Sluice-*` but
/// the request name and the message options of [`options`]) are reserved:
/// the host sets the cursor, slice, attempt and causation id itself, so a
/// producer can neither forge where a post came from nor make a message
/// pass for a later slice or attempt. An option's value must follow its
/// rule (`options::check`). The error says which rule was broken, in one
/// line.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let shown = |s: &str| {
        let mut out: String = s.chars().take(60).collect();
        if s.chars().count() > 60 {
            out.push_str("...");
        }
        format!("{out:?}")
    };
    if name.is_empty() {
        return Err("header name is empty".into());
    }
    if name.len() > MAX_HEADER_NAME {
        return Err(format!(
            "header name {} is longer than {MAX_HEADER_NAME} bytes",
            shown(name)
        ));
    }
    if let Some(c) = name
        .bytes()
        .find(|b| !b.is_ascii_graphic() || *b == b':')
        .map(|b| {
            if b.is_ascii() {
                char::from(b)
            } else {
                '\u{fffd}'
            }
        })
    {
        return Err(format!(
            "header name {} contains {c:?}: names are visible ASCII without ':' (no spaces, no control characters)",
            shown(name)
        ));
    }
    let producers = name.eq_ignore_ascii_case(REQUEST_NAME_HEADER) || options::is_option(name);
    if is_reserved_header(name) || (is_carried_header(name) && !producers) {
        return Err(format!(
            "header name {} is reserved (Nats-* and Sluice-* are the transport's and the host's own fields; {REQUEST_NAME_HEADER} and {} are the ones a producer may set)",
            shown(name),
            options::names().join(", ")
        ));
    }
    if let Some(checked) = options::check(name, value) {
        return checked;
    }
    // Byte searches in core (a guest may post 640,000 headers in one call).
    let bytes = value.as_bytes();
    if bytes.contains(&b'\r') || bytes.contains(&b'\n') {
        return Err(format!(
            "header {name} has a value with a line break; values cannot contain CR or LF"
        ));
    }
    Ok(())
}

/// `Nats-*`, and `Sluice-*` other than the fields a message carries
/// (request name, cursor, slice, causation), which producers may set.
pub fn is_reserved_header(name: &str) -> bool {
    let starts = |prefix: &str| {
        name.len() >= prefix.len()
            && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    starts("nats-") || (starts("sluice-") && !is_carried_header(name))
}

/// The `sluice-*` headers that are message content, not envelope.
pub fn is_carried_header(name: &str) -> bool {
    [
        CURSOR_HEADER,
        SLICE_HEADER,
        REQUEST_NAME_HEADER,
        CAUSATION_HEADER,
        ATTEMPT_HEADER,
        REPLAY_HEADER,
        crate::cron::CRON_HEADER,
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
        || options::is_option(name)
}

/// Header on every posted message naming the message whose handling posted it.
pub const CAUSATION_HEADER: &str = "sluice-causation-id";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_that_cannot_travel_are_refused_with_the_rule() {
        assert_eq!(check_header("trace-id", "abc def ü"), Ok(()));
        assert_eq!(check_header(REQUEST_NAME_HEADER, "PlaceOrder"), Ok(()));
        let err = |n: &str, v: &str| check_header(n, v).err().unwrap_or_default();
        assert!(err("", "x").contains("empty"));
        assert!(err("a b", "x").contains("' '"), "{}", err("a b", "x"));
        assert!(err("a:b", "x").contains("':'"));
        assert!(err("tab\there", "x").contains("control"));
        assert!(err("naïve", "x").contains("visible ASCII"));
        assert!(err("x", "one\ntwo").contains("CR or LF"));
        assert!(err("x", "one\rtwo").contains("CR or LF"));
        assert!(err("Nats-Msg-Id", "x").contains("reserved"));
        assert!(err("SLUICE-ID", "x").contains("reserved"));
        // The host's own fields: a producer sets none of them.
        for name in [
            CAUSATION_HEADER,
            "Sluice-Attempt",
            CURSOR_HEADER,
            "SLUICE-SLICE",
        ] {
            assert!(err(name, "1").contains("reserved"), "{name}");
        }
        assert!(err(&"h".repeat(MAX_HEADER_NAME + 1), "x").contains("longer"));
    }
}
