//! The one place a Sluice message becomes NATS subject, headers and payload,
//! and back.
//!
//! Subjects: `sluice.<channel>` for a channel, `sluice-cont.<handler>.<channel>`
//! for a message addressed to one handler (a continuation, a replay, a
//! retry), `sluice-dlq.<channel>` for dead letters. A message with a
//! priority above 0 (`sluice-priority`) goes to its level's subjects
//! instead, `sluice-p.<level>.<channel>` and
//! `sluice-pc.<level>.<handler>.<channel>`, which a consumer of that level
//! reads (`jetstream/priority.rs`); [`target`] is the one place that picks
//! a message's subject, from its headers, so its retries, waiting copies
//! and next slices keep its level. The handler part is ONE
//! subject token whatever the handler's name: bytes other than
//! `[A-Za-z0-9_-]` (a `.` in `billing.v2`, say) are written `~XX` (and `~`
//! itself `~7E`), so the channel starts after the second dot and the
//! mapping is unambiguous and reversible.
//!
//! Headers: the message's own headers go as they are (they were checked
//! where they entered, `message::check_header`); Sluice's fields go in
//! `Sluice-*` headers and `Nats-Msg-Id` carries the dedupe id so the
//! stream's duplicate window drops a re-send. Every value Sluice itself
//! writes that can hold free text (ids, cursors, request names, error
//! reasons) is percent-encoded (controls, space, `%` and non-ASCII as
//! `%XX`), so no byte sequence a plugin or client chooses can break a
//! header. Nothing here panics: headers are built with the fallible
//! `HeaderName`/`HeaderValue` conversions (async-nats asserts on the `&str`
//! ones), and a message that still cannot be framed is an error the caller
//! acts on (the relay sets such a row aside as poison).

use std::borrow::Cow;
use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::message::{
    CURSOR_HEADER, Headers, Message, MessageKind, SLICE_HEADER, is_carried_header,
    is_reserved_header,
};

/// Subject prefix of every channel.
pub const PREFIX: &str = "sluice";
/// Subject prefix of messages addressed to one handler.
pub const CONT_PREFIX: &str = "sluice-cont";
/// Subject prefix of dead letters.
pub const DLQ_PREFIX: &str = "sluice-dlq";
/// Subject prefix of a channel's messages above priority 0.
pub const PRIO_PREFIX: &str = "sluice-p";
/// Subject prefix of messages above priority 0 addressed to one handler.
pub const PRIO_CONT_PREFIX: &str = "sluice-pc";

/// The message id (percent-encoded).
pub const H_ID: &str = "Sluice-Id";
/// command | event.
pub const H_KIND: &str = "Sluice-Kind";
/// Unix ms before which the message must not run.
pub const H_NOT_BEFORE: &str = "Sluice-Not-Before";
/// Unix ms after which the message must not start.
pub const H_EXPIRES: &str = "Sluice-Expires-At";
/// On dead letters: why (percent-encoded).
pub const H_ERROR: &str = "Sluice-Error";
/// The broker's dedupe id.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// What percent-encoding escapes in the values Sluice writes: controls,
/// space (a value's edges may be trimmed by a reader) and `%` itself;
/// non-ASCII is always escaped.
const ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// Why a message cannot go on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A header name or value NATS cannot carry.
    #[error("header {name:?} cannot be sent: {reason}")]
    Header {
        /// The header's name (as given).
        name: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A subject NATS cannot publish to.
    #[error(
        "subject {subject:?} is not a valid NATS subject (empty token, wildcard, space or control character)"
    )]
    Subject {
        /// The subject.
        subject: String,
    },
    /// Headers plus body are over the server's `max_payload`.
    #[error(
        "message of {size} bytes (headers and body) is over the NATS server's max_payload of {max} bytes"
    )]
    TooLarge {
        /// Wire size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// A delay the connected server cannot keep without holding a
    /// consumer slot (it predates message schedules, nats-server 2.12).
    #[error(
        "nats-server {version} cannot schedule messages (needs 2.12 or later): post without --delay/--at, or upgrade the server"
    )]
    NoSchedules {
        /// The server's version.
        version: String,
    },
    /// A delay past what the stream keeps messages for.
    #[error(
        "a delay of {delay_s} s is longer than the stream keeps messages ({max_s} s: [nats] max_age, less a minute)"
    )]
    DelayTooLong {
        /// The delay asked, seconds.
        delay_s: i64,
        /// The longest possible, seconds.
        max_s: i64,
    },
}

/// `sluice.<channel>`.
pub fn subject(channel: &str) -> String {
    format!("{PREFIX}.{channel}")
}

/// `sluice-cont.<handler token>.<channel>`: only that handler's consumer
/// reads it.
pub fn continuation_subject(consumer: &str, channel: &str) -> String {
    format!("{CONT_PREFIX}.{}.{channel}", handler_token(consumer))
}

/// The subject of a message of `channel` with `headers`, addressed to
/// handler `to` or to every handler of the channel: its priority's level
/// subjects ([`subject_at`], [`continuation_subject_at`]).
pub fn target(channel: &str, to: Option<&str>, headers: &Headers) -> String {
    let level = crate::message::options::Options::of(headers).priority;
    match to {
        Some(handler) => continuation_subject_at(handler, channel, level),
        None => subject_at(channel, level),
    }
}

/// [`target`] for a delivery's raw headers (a copy that travels again).
pub fn target_of(channel: &str, to: Option<&str>, headers: Option<&HeaderMap>) -> String {
    let level = headers
        .and_then(|h| {
            h.iter()
                .find(|(name, _)| {
                    let name: &str = name.as_ref();
                    name.eq_ignore_ascii_case(crate::message::options::PRIORITY_HEADER)
                })
                .and_then(|(name, values)| {
                    let name: &str = name.as_ref();
                    let first = values.first()?;
                    let pair = vec![(name.to_owned(), first.as_str().to_owned())];
                    Some(crate::message::options::Options::of(&pair).priority)
                })
        })
        .unwrap_or(0);
    match to {
        Some(handler) => continuation_subject_at(handler, channel, level),
        None => subject_at(channel, level),
    }
}

/// `sluice.<channel>` at level 0, `sluice-p.<level>.<channel>` above.
pub fn subject_at(channel: &str, level: u8) -> String {
    if level == 0 {
        subject(channel)
    } else {
        format!("{PRIO_PREFIX}.{level}.{channel}")
    }
}

/// `sluice-cont.<handler token>.<channel>` at level 0,
/// `sluice-pc.<level>.<handler token>.<channel>` above.
pub fn continuation_subject_at(consumer: &str, channel: &str, level: u8) -> String {
    if level == 0 {
        continuation_subject(consumer, channel)
    } else {
        format!(
            "{PRIO_CONT_PREFIX}.{level}.{}.{channel}",
            handler_token(consumer)
        )
    }
}

/// The priority level of a message on `subject` (0 on the plain subjects
/// and on anything else).
pub fn level_of(subject: &str) -> u8 {
    match subject.split_once('.') {
        Some((PRIO_PREFIX | PRIO_CONT_PREFIX, rest)) => rest
            .split_once('.')
            .and_then(|(level, _)| level.parse::<u8>().ok())
            .filter(|l| (1..=crate::message::options::MAX_PRIORITY).contains(l))
            .unwrap_or(0),
        _ => 0,
    }
}

/// `sluice-dlq.<channel>`.
pub fn dlq_subject(channel: &str) -> String {
    format!("{DLQ_PREFIX}.{channel}")
}

/// A handler name as one subject token: `[A-Za-z0-9_-]` as is, every other
/// byte as `~XX`.
pub fn handler_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

/// Whether NATS can publish to `subject`: non-empty tokens of visible
/// ASCII, no wildcards.
pub fn check_subject(subject: &str) -> Result<(), WireError> {
    let ok = !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && token.bytes().all(|b| b.is_ascii_graphic())
        });
    if ok {
        Ok(())
    } else {
        Err(WireError::Subject {
            subject: subject.chars().take(200).collect(),
        })
    }
}

/// `s` percent-encoded for a header value (unchanged, and not copied, when
/// it is plain visible ASCII without `%`).
pub fn encode(s: &str) -> Cow<'_, str> {
    utf8_percent_encode(s, ESCAPED).into()
}

/// Reverses [`encode`]. A value that does not decode to UTF-8 (a foreign
/// producer's) is taken as it is.
pub fn decode_text(s: &str) -> String {
    match percent_decode_str(s).decode_utf8() {
        Ok(d) => d.into_owned(),
        Err(_) => s.to_owned(),
    }
}

/// What travels besides the body.
pub struct Envelope<'a> {
    /// The message.
    pub message: &'a Message,
    /// Broker dedupe id.
    pub dedupe_id: &'a str,
    /// Unix ms before which it must not run.
    pub not_before: Option<i64>,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
}

/// Adds one header, refusing (never panicking on) what NATS cannot carry.
pub fn append(h: &mut HeaderMap, name: &str, value: &str) -> Result<(), WireError> {
    let bad = |reason: &str| WireError::Header {
        name: name.chars().take(100).collect(),
        reason: reason.to_owned(),
    };
    let n = HeaderName::from_str(name).map_err(|_| {
        bad("names are visible ASCII without ':' (no spaces or control characters)")
    })?;
    let v = HeaderValue::from_str(value).map_err(|_| bad("values cannot contain CR or LF"))?;
    h.append(n, v);
    Ok(())
}

/// Sets one header of Sluice's own (replacing any value it had),
/// refusing what NATS cannot carry.
pub fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), WireError> {
    set(h, name, value)
}

/// Sets one header (replacing any value it had).
fn set(h: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), WireError> {
    let v = HeaderValue::from_str(value).map_err(|_| WireError::Header {
        name: name.to_owned(),
        reason: "values cannot contain CR or LF".into(),
    })?;
    h.insert(HeaderName::from_static(name), v);
    Ok(())
}

/// Headers for `env`.
pub fn headers(env: &Envelope<'_>) -> Result<HeaderMap, WireError> {
    let mut h = HeaderMap::new();
    for (k, v) in &env.message.headers {
        if is_carried_header(k) {
            // Sluice's own free text (cursor, request name, causation id).
            append(&mut h, k, &encode(v))?;
        } else if !is_reserved_header(k) {
            append(&mut h, k, v)?;
        }
        // Our own and the server's names are reserved: never forwarded.
    }
    set(&mut h, NATS_MSG_ID, &encode(env.dedupe_id))?;
    set(&mut h, H_ID, &encode(&env.message.id))?;
    set(&mut h, H_KIND, env.message.kind.as_str())?;
    if let Some(t) = env.not_before {
        set(&mut h, H_NOT_BEFORE, &t.to_string())?;
    }
    if let Some(t) = env.expires_at {
        set(&mut h, H_EXPIRES, &t.to_string())?;
    }
    Ok(h)
}

/// The headers of a dead-letter copy: the delivery's own, plus why (cut to
/// `max_reason` bytes, then encoded) and a dedupe id.
pub fn dead_letter_headers(
    original: Option<&HeaderMap>,
    reason: &str,
    max_reason: usize,
    dedupe_id: &str,
) -> Result<HeaderMap, WireError> {
    // The server's own fields stay behind: a retry fired by a schedule
    // carries `Nats-Schedule-Next` and `Nats-Scheduler`, which the
    // dead-letter stream (no schedules allowed) refuses.
    let mut h = without_server_headers(original)?;
    let mut cut = reason.len().min(max_reason);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    set(&mut h, H_ERROR, &encode(&reason[..cut]))?;
    set(&mut h, NATS_MSG_ID, &encode(dedupe_id))?;
    Ok(h)
}

/// The headers of a copy of a delivery that travels again (a delivery
/// rescheduled until its not-before time): its own headers but the
/// server's (`Nats-*`: ids, schedule fields), with `Sluice-Id` set so a
/// message that had only a stream-sequence id keeps it.
pub fn forwarded_headers(
    original: Option<&HeaderMap>,
    message_id: &str,
    dedupe_id: &str,
) -> Result<HeaderMap, WireError> {
    let mut h = without_server_headers(original)?;
    set(&mut h, H_ID, &encode(message_id))?;
    set(&mut h, NATS_MSG_ID, &encode(dedupe_id))?;
    Ok(h)
}

/// `original`'s headers but the server's (`Nats-*`: ids, schedule fields,
/// expectations), for a copy that travels again.
fn without_server_headers(original: Option<&HeaderMap>) -> Result<HeaderMap, WireError> {
    let mut h = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            if name.len() >= 5 && name.as_bytes()[..5].eq_ignore_ascii_case(b"nats-") {
                continue;
            }
            for v in values {
                append(&mut h, name, v.as_str())?;
            }
        }
    }
    Ok(h)
}

/// Bytes `headers` and a body of `body_len` take against `max_payload`
/// (what the server counts: the header block as framed, plus the payload).
pub fn wire_size(headers: &HeaderMap, body_len: usize) -> usize {
    if headers.is_empty() {
        return body_len;
    }
    let mut len = "NATS/1.0\r\n".len() + "\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for v in values {
            len += name.len() + ": ".len() + v.as_str().len() + "\r\n".len();
        }
    }
    len + body_len
}

/// Checks that `headers` and a body of `body_len` fit in `max` bytes.
pub fn check_size(headers: &HeaderMap, body_len: usize, max: usize) -> Result<(), WireError> {
    let size = wire_size(headers, body_len);
    if size > max {
        return Err(WireError::TooLarge { size, max });
    }
    Ok(())
}

/// A decoded delivery.
pub struct Decoded {
    /// The message.
    pub message: Message,
    /// Which slice it starts.
    pub slice: u32,
    /// The cursor it carries.
    pub cursor: Option<String>,
    /// Unix ms before which it must not run.
    pub not_before: Option<i64>,
    /// Unix ms after which it must not start.
    pub expires_at: Option<i64>,
}

/// The channel of a message on `subject` (`sluice.<channel>`,
/// `sluice-cont.<handler token>.<channel>`, or either at a level:
/// `sluice-p.<level>.<channel>`, `sluice-pc.<level>.<handler token>.<channel>`).
pub fn channel_of(subject: &str) -> Result<&str, String> {
    fn level(rest: &str) -> Option<&str> {
        let (l, after) = rest.split_once('.')?;
        let l: u8 = l.parse().ok()?;
        (1..=crate::message::options::MAX_PRIORITY)
            .contains(&l)
            .then_some(after)
    }
    let channel = match subject.split_once('.') {
        Some((PREFIX, rest)) => Some(rest),
        Some((CONT_PREFIX, rest)) => rest.split_once('.').map(|(_, c)| c),
        Some((PRIO_PREFIX, rest)) => level(rest),
        Some((PRIO_CONT_PREFIX, rest)) => {
            level(rest).and_then(|r| r.split_once('.')).map(|(_, c)| c)
        }
        _ => None,
    };
    let channel = channel.ok_or_else(|| format!("subject {subject:?} is not a sluice channel"))?;
    crate::names::check_channel(channel).map_err(|e| format!("subject {subject:?}: {e}"))?;
    Ok(channel)
}

/// Reads a message published by [`headers`], or by any NATS client: a
/// message without `Sluice-Id` or `Nats-Msg-Id` takes `fallback_id` (the
/// transport derives it from the stored message, so it is the same on every
/// redelivery), and one without `Sluice-Kind` is a command.
pub fn decode(
    subject: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
    fallback_id: Option<String>,
) -> Result<Decoded, String> {
    let channel = channel_of(subject)?;
    let get = |name: &'static str| {
        headers
            .and_then(|h| h.get(HeaderName::from_static(name)))
            .map(|v| v.as_str().to_owned())
    };
    let id = get(H_ID)
        .or_else(|| get(NATS_MSG_ID))
        .map(|id| decode_text(&id))
        .filter(|id| !id.is_empty())
        .or(fallback_id)
        .ok_or_else(|| "message has neither Sluice-Id nor Nats-Msg-Id".to_owned())?;
    let kind = match get(H_KIND).as_deref() {
        None => MessageKind::Command,
        Some(k) => MessageKind::parse(&k.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown Sluice-Kind {k:?} (command or event)"))?,
    };
    let mut user: Headers = Vec::new();
    if let Some(h) = headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            let carried = is_carried_header(name);
            if is_reserved_header(name) {
                continue;
            }
            for v in values {
                let v = v.as_str();
                let v = if carried {
                    decode_text(v)
                } else {
                    v.to_owned()
                };
                // Stored with the lowercase name Sluice uses for its own.
                let name = if carried {
                    name.to_ascii_lowercase()
                } else {
                    name.to_owned()
                };
                user.push((name, v));
            }
        }
    }
    let header = |key: &str| {
        user.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let slice = header(SLICE_HEADER)
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("bad {SLICE_HEADER} {s:?}"))
        })
        .transpose()?
        .unwrap_or(0);
    let cursor = header(CURSOR_HEADER);
    let ms = |name: &'static str| {
        get(name)
            .map(|s| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("bad {name} {s:?} (Unix milliseconds)"))
            })
            .transpose()
    };
    Ok(Decoded {
        message: Message {
            id,
            channel: channel.to_owned(),
            kind,
            headers: user,
            body: body.to_vec(),
        },
        slice,
        cursor,
        not_before: ms(H_NOT_BEFORE)?,
        expires_at: ms(H_EXPIRES)?,
    })
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::REQUEST_NAME_HEADER;

    fn message(headers: Headers) -> Message {
        Message {
            id: "m1".into(),
            channel: "task.reminder".into(),
            kind: MessageKind::Event,
            headers,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn a_message_survives_the_round_trip() {
        let m = message(vec![
            ("trace".into(), "abc".into()),
            ("Nats-Msg-Id".into(), "spoofed".into()),
            (CURSOR_HEADER.into(), "40".into()),
            (SLICE_HEADER.into(), "2".into()),
        ]);
        let h = headers(&Envelope {
            message: &m,
            dedupe_id: "d1",
            not_before: Some(5),
            expires_at: None,
        })
        .expect("headers");
        assert_eq!(h.get(NATS_MSG_ID).map(|v| v.as_str()), Some("d1"));
        let d = decode("sluice.task.reminder", Some(&h), b"{}", None).expect("decode");
        assert_eq!(d.message.id, "m1");
        assert_eq!(d.message.channel, "task.reminder");
        assert_eq!(d.message.kind, MessageKind::Event);
        assert_eq!(
            (d.slice, d.cursor.as_deref(), d.not_before),
            (2, Some("40"), Some(5))
        );
        assert!(d.message.headers.contains(&("trace".into(), "abc".into())));
        let c = decode("sluice-cont.h1.task.reminder", Some(&h), b"", None).expect("decode");
        assert_eq!(c.message.channel, "task.reminder");
    }

    #[test]
    fn a_foreign_message_without_ids_is_rejected() {
        assert!(decode("sluice.x", None, b"{}", None).is_err());
        assert!(decode("other.x", None, b"{}", None).is_err());
        let mut h = HeaderMap::new();
        h.insert(H_ID, "m1");
        assert!(decode("sluice.ok", Some(&h), b"{}", None).is_ok());
        for bad in ["sluice.a..b", "sluice.", "sluice-cont.h.a b"] {
            assert!(decode(bad, Some(&h), b"{}", None).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_text_of_any_bytes_survives_the_wire() {
        let nasty = "line one\r\nline two: 100% \u{0}\u{7f} ünïcødé \t end ";
        let mut m = message(vec![
            (CURSOR_HEADER.into(), nasty.into()),
            (REQUEST_NAME_HEADER.into(), nasty.into()),
        ]);
        m.id = nasty.into();
        let h = headers(&Envelope {
            message: &m,
            dedupe_id: nasty,
            not_before: None,
            expires_at: None,
        })
        .expect("free text is encoded, never refused");
        for (_, values) in h.iter() {
            for v in values {
                assert!(
                    v.as_str().bytes().all(|b| b.is_ascii_graphic()),
                    "{:?}",
                    v.as_str()
                );
            }
        }
        let d = decode("sluice.x", Some(&h), b"", None).expect("decode");
        assert_eq!(d.message.id, nasty);
        assert_eq!(d.cursor.as_deref(), Some(nasty));
        assert_eq!(d.message.header(REQUEST_NAME_HEADER), Some(nasty));
        // Plain values stay readable on the wire.
        assert_eq!(encode("01a2-b3_c.d/e"), "01a2-b3_c.d/e");
    }

    #[test]
    fn a_header_nats_cannot_carry_is_an_error_not_a_panic() {
        for (k, v) in [("a b", "x"), ("a:b", "x"), ("é", "x"), ("ok", "a\nb")] {
            let m = message(vec![(k.into(), v.into())]);
            let err = headers(&Envelope {
                message: &m,
                dedupe_id: "d",
                not_before: None,
                expires_at: None,
            })
            .err();
            assert!(
                matches!(err, Some(WireError::Header { .. })),
                "{k:?}={v:?}: {err:?}"
            );
        }
        let h = dead_letter_headers(None, "boom\r\nat line 3", 1024, "m/h/dead")
            .expect("a reason with newlines is encoded");
        assert_eq!(
            h.get(H_ERROR).map(|v| decode_text(v.as_str())),
            Some("boom\r\nat line 3".into())
        );
        let long = "é".repeat(3000);
        let h = dead_letter_headers(None, &long, 1001, "d").expect("cut at a char boundary");
        assert_eq!(
            h.get(H_ERROR).map(|v| decode_text(v.as_str()).len()),
            Some(1000)
        );
        // A delivery fired by a schedule: the server's fields stay behind.
        let mut fired = HeaderMap::new();
        fired.insert("Nats-Scheduler", "sluice-sched.x");
        fired.insert("Nats-Schedule-Next", "purge");
        fired.insert("trace-id", "t");
        let h = dead_letter_headers(Some(&fired), "dead", 1024, "d").expect("headers");
        assert!(h.get("Nats-Scheduler").is_none() && h.get("Nats-Schedule-Next").is_none());
        assert_eq!(h.get("trace-id").map(|v| v.as_str()), Some("t"));
        assert_eq!(h.get(NATS_MSG_ID).map(|v| v.as_str()), Some("d"));
    }

    #[test]
    fn dotted_handler_names_make_unambiguous_subjects() {
        let a = continuation_subject("billing.v2", "orders");
        let b = continuation_subject("billing", "v2.orders");
        assert_ne!(a, b);
        assert_eq!(a, "sluice-cont.billing~2Ev2.orders");
        assert_eq!(channel_of(&a), Ok("orders"));
        assert_eq!(channel_of(&b), Ok("v2.orders"));
        assert_eq!(handler_token("a~b"), "a~7Eb");
        assert_ne!(handler_token("a~2Eb"), handler_token("a.b"));
        assert_eq!(
            continuation_subject("plain-name_1", "c"),
            "sluice-cont.plain-name_1.c"
        );
        for s in [&a, &b] {
            assert_eq!(check_subject(s), Ok(()));
        }
    }

    #[test]
    fn a_priority_picks_its_levels_subjects_and_decodes_back() {
        let urgent: Headers = vec![("Sluice-Priority".into(), "7".into())];
        let plain: Headers = vec![("sluice-priority".into(), "0".into())];
        assert_eq!(target("a.b", None, &urgent), "sluice-p.7.a.b");
        assert_eq!(target("a.b", None, &plain), "sluice.a.b");
        assert_eq!(target("a.b", None, &Vec::new()), "sluice.a.b");
        let cont = target("v2.orders", Some("billing.v2"), &urgent);
        assert_eq!(cont, "sluice-pc.7.billing~2Ev2.v2.orders");
        assert_eq!(
            target("c", Some("h"), &plain),
            continuation_subject("h", "c")
        );
        // A foreign producer's bad value reads as 0.
        let bad: Headers = vec![("sluice-priority".into(), "12".into())];
        assert_eq!(target("c", None, &bad), "sluice.c");
        let mut raw = HeaderMap::new();
        raw.insert("SLUICE-PRIORITY", "3");
        assert_eq!(target_of("c", Some("h"), Some(&raw)), "sluice-pc.3.h.c");
        assert_eq!(target_of("c", Some("h"), None), "sluice-cont.h.c");
        for (subject, channel, level) in [
            ("sluice-p.7.a.b", "a.b", 7),
            ("sluice-pc.7.billing~2Ev2.v2.orders", "v2.orders", 7),
            ("sluice-p.1.x", "x", 1),
            ("sluice.a.b", "a.b", 0),
            ("sluice-cont.h.a.b", "a.b", 0),
        ] {
            assert_eq!(channel_of(subject), Ok(channel), "{subject}");
            assert_eq!(level_of(subject), level, "{subject}");
            assert_eq!(check_subject(subject), Ok(()));
        }
        for bad in [
            "sluice-p.0.x",
            "sluice-p.10.x",
            "sluice-p.x",
            "sluice-p.7",
            "sluice-pc.7.h",
            "sluice-px.7.x",
        ] {
            assert!(channel_of(bad).is_err(), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(H_ID, "m1");
        let d = decode("sluice-pc.9.h.x.y", Some(&h), b"{}", None).expect("decode");
        assert_eq!(d.message.channel, "x.y");
    }

    #[test]
    fn bad_subjects_are_caught_before_publishing() {
        for s in [
            "sluice.a..b",
            "sluice.",
            "sluice.a b",
            "sluice.>",
            "sluice.*.x",
            "",
        ] {
            assert!(check_subject(s).is_err(), "{s:?}");
        }
        assert_eq!(check_subject("sluice.a.b-c_d"), Ok(()));
    }

    #[test]
    fn a_plain_publish_from_any_client_is_a_message() {
        let d = decode(
            "sluice.peer.bench",
            None,
            br#"{"id": 1}"#,
            Some("nats-7-1".into()),
        )
        .expect("decode");
        assert_eq!(d.message.id, "nats-7-1");
        assert_eq!(d.message.channel, "peer.bench");
        assert_eq!(d.message.kind, MessageKind::Command);
        assert!(decode("sluice.x", None, b"{}", None).is_err());
        assert!(decode("other.x", None, b"{}", Some("i".into())).is_err());
        assert!(decode("sluice-cont.h", None, b"{}", Some("i".into())).is_err());
    }

    #[test]
    fn wire_size_counts_what_the_server_counts() {
        let mut h = HeaderMap::new();
        append(&mut h, "a", "bc").expect("header");
        // "NATS/1.0\r\n" + "a: bc\r\n" + "\r\n"
        assert_eq!(wire_size(&h, 10), 10 + 7 + 2 + 10);
        assert_eq!(wire_size(&HeaderMap::new(), 10), 10);
        assert!(matches!(
            check_size(&h, 100, 50),
            Err(WireError::TooLarge { max: 50, .. })
        ));
    }
}
