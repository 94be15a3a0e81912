//! W3C Trace Context (`traceparent`) in and out of messages, so a message
//! that causes posts that cause more posts is one trace.
//!
//! Where it is set:
//! - `sluice post` and `POST /v1/channels/{c}/messages` put a `traceparent`
//!   header on the message: the caller's own (`--header traceparent=...`,
//!   or the HTTP request's header), else a new trace.
//! - A job's span id is derived from (message id, handler, cursor,
//!   attempt), so every host and every re-run names an attempt alike; the
//!   posts a call commits carry `traceparent` = (the job's trace, this
//!   span): the next job's span is its child ([`inherit`]).
//!
//! It is plain headers on the message, so it travels on both transports
//! (the embedded queue stores headers; the JetStream wire format carries
//! user headers) without either knowing about it. A plugin cannot forge the
//! chain: the host replaces any `traceparent` a post sets.
//!
//! Why hand-written: the format is one line of hex (W3C Trace Context
//! level 1), and this runs on every message whether or not spans are
//! exported; the OpenTelemetry propagator would need its context types on
//! that path.

use sha2::{Digest, Sha256};

use crate::message::Headers;
use crate::store::NewMessage;

/// The header's name (lowercase, as W3C writes it).
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`: version 00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace, shared by every span in it (never all zero).
    pub trace_id: [u8; 16],
    /// The span that is the parent of whatever receives this (never zero).
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "traceparent {0:?} is not a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, ids not all zero)"
)]
pub struct BadTraceParent(pub String);

impl TraceParent {
    /// A new trace with a random trace id and span id, sampled.
    pub fn new_root() -> TraceParent {
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        fill(&mut trace_id);
        fill(&mut span_id);
        TraceParent {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// Parses `00-<trace>-<span>-<flags>` (lowercase hex). A higher
    /// version with at least these fields is read as version 00, as the
    /// spec asks.
    pub fn parse(value: &str) -> Result<TraceParent, BadTraceParent> {
        let bad = || BadTraceParent(value.chars().take(80).collect());
        let v = value.trim();
        let parts: Vec<&str> = v.split('-').collect();
        let [version, trace, span, flags, ..] = parts[..] else {
            return Err(bad());
        };
        if version.len() != 2 || version == "ff" || (version == "00" && parts.len() != 4) {
            return Err(bad());
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        if !hex(version, &mut [0u8; 1])
            || !hex(trace, &mut trace_id)
            || !hex(span, &mut span_id)
            || !hex(flags, &mut flag)
            || trace_id == [0; 16]
            || span_id == [0; 8]
        {
            return Err(bad());
        }
        Ok(TraceParent {
            trace_id,
            span_id,
            flags: flag[0],
        })
    }

    /// The same trace with `span_id` as the parent.
    pub fn child(&self, span_id: [u8; 8]) -> TraceParent {
        TraceParent { span_id, ..*self }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_hex(&self) -> String {
        to_hex(&self.trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id),
            self.flags
        )
    }
}

/// The valid `traceparent` among `headers`, if any (the first one).
pub fn from_headers(headers: &Headers) -> Option<TraceParent> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
        .and_then(|(_, v)| TraceParent::parse(v).ok())
}

/// Sets `traceparent` in `headers` to `tp`, replacing any there.
pub fn set(headers: &mut Headers, tp: &TraceParent) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(TRACEPARENT));
    headers.push((TRACEPARENT.to_owned(), tp.to_string()));
}

/// The span id of one attempt of one job: derived, so every host and every
/// re-run of the same attempt names it alike (the posts it commits point
/// at it), and never zero.
pub fn job_span_id(
    message_id: &str,
    consumer: &str,
    cursor: Option<&str>,
    attempt: u32,
) -> [u8; 8] {
    let mut h = Sha256::new();
    for part in [message_id, consumer, cursor.unwrap_or("")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(attempt.to_le_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

/// The trace a job runs in, and its own span: the message's `traceparent`
/// (or a new trace for a message that came without one) with this
/// attempt's span id.
pub fn job_trace(
    headers: &Headers,
    message_id: &str,
    consumer: &str,
    cursor: Option<&str>,
    attempt: u32,
) -> (Option<TraceParent>, TraceParent) {
    let parent = from_headers(headers);
    let span = job_span_id(message_id, consumer, cursor, attempt);
    let trace = parent.unwrap_or_else(|| {
        // No trace came with it: the trace id is derived from the message
        // so every attempt of it lands in the same trace.
        let mut h = Sha256::new();
        h.update(message_id.as_bytes());
        let digest = h.finalize();
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&digest[..16]);
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        TraceParent {
            trace_id,
            span_id: span,
            flags: 1,
        }
    });
    (parent, trace.child(span))
}

/// Points every post of a call at the job's span: the posted messages'
/// jobs become its children in the same trace.
pub fn inherit(posts: &mut [NewMessage], job: &TraceParent) {
    for post in posts {
        set(&mut post.message.headers, job);
    }
}

fn fill(bytes: &mut [u8]) {
    loop {
        for b in bytes.iter_mut() {
            *b = fastrand::u8(..);
        }
        if bytes.iter().any(|b| *b != 0) {
            return;
        }
    }
}

fn hex(s: &str, out: &mut [u8]) -> bool {
    if s.len() != out.len() * 2 {
        return false;
    }
    let digits = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let (Some(hi), Some(lo)) = (nibble(digits[2 * i]), nibble(digits[2 * i + 1])) else {
            return false;
        };
        *o = hi << 4 | lo;
    }
    true
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let tp = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(tp.to_string(), EXAMPLE);
        assert_eq!(tp.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.flags, 1);
        // A future version with more fields is read as 00.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert_eq!(
            TraceParent::parse(future).map(|t| t.trace_id),
            Ok(tp.trace_id)
        );
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-é bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
        ] {
            if bad.ends_with('\n') {
                // Surrounding whitespace is trimmed, as HTTP does.
                assert!(TraceParent::parse(bad).is_ok());
                continue;
            }
            assert!(TraceParent::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_job_continues_its_messages_trace_and_its_posts_continue_the_job() {
        let mut headers = vec![("x".to_owned(), "y".to_owned())];
        set(&mut headers, &TraceParent::parse(EXAMPLE).expect("valid"));
        let (parent, job) = job_trace(&headers, "m1", "h", None, 1);
        assert_eq!(
            parent.map(|p| p.span_id),
            Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(job.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(job.span_id, job_span_id("m1", "h", None, 1));
        assert_ne!(
            job.span_id,
            job_span_id("m1", "h", None, 2),
            "attempts are spans of their own"
        );
        // No traceparent: a trace of its own, the same for every attempt.
        let (none, a1) = job_trace(&vec![], "m2", "h", None, 1);
        let (_, a2) = job_trace(&vec![], "m2", "h", None, 2);
        assert_eq!((none, a1.trace_id), (None, a2.trace_id));
        // A plugin's own traceparent on a post is replaced.
        let mut post = vec![(TRACEPARENT.to_owned(), "forged".to_owned())];
        set(&mut post, &job);
        assert_eq!(from_headers(&post), Some(job));
        assert_eq!(post.len(), 1);
    }
}
