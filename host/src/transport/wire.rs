//! How a Sluice message looks on JetStream: subject `sluice.<channel>`, the
//! body as payload, user headers as NATS headers, and our own fields in
//! `Sluice-*` headers. `Nats-Msg-Id` carries the dedupe id so the stream's
//! duplicate window drops a re-send of the same post.

use async_nats::HeaderMap;

use crate::message::{CURSOR_HEADER, Headers, Message, MessageKind, SLICE_HEADER};

/// Subject prefix of every channel.
pub const PREFIX: &str = "sluice";
/// Subject prefix of continuations addressed to one handler.
pub const CONT_PREFIX: &str = "sluice-cont";
/// Subject prefix of dead letters.
pub const DLQ_PREFIX: &str = "sluice-dlq";

const H_ID: &str = "Sluice-Id";
const H_KIND: &str = "Sluice-Kind";
const H_NOT_BEFORE: &str = "Sluice-Not-Before";
const H_EXPIRES: &str = "Sluice-Expires-At";
/// On dead letters: why.
pub const H_ERROR: &str = "Sluice-Error";
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// `sluice.<channel>`.
pub fn subject(channel: &str) -> String {
    format!("{PREFIX}.{channel}")
}

/// `sluice-cont.<handler>.<channel>`: only that handler's consumer reads it.
pub fn continuation_subject(consumer: &str, channel: &str) -> String {
    format!("{CONT_PREFIX}.{consumer}.{channel}")
}

/// `sluice-dlq.<channel>`.
pub fn dlq_subject(channel: &str) -> String {
    format!("{DLQ_PREFIX}.{channel}")
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

/// Headers for `env`.
pub fn headers(env: &Envelope<'_>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &env.message.headers {
        // Our own and the server's names are reserved.
        if is_reserved(k) {
            continue;
        }
        h.append(k.as_str(), v.as_str());
    }
    h.insert(NATS_MSG_ID, env.dedupe_id);
    h.insert(H_ID, env.message.id.as_str());
    h.insert(H_KIND, env.message.kind.as_str());
    if let Some(t) = env.not_before {
        h.insert(H_NOT_BEFORE, t.to_string().as_str());
    }
    if let Some(t) = env.expires_at {
        h.insert(H_EXPIRES, t.to_string().as_str());
    }
    h
}

fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("nats-") || (lower.starts_with("sluice-") && !is_carried(&lower))
}

/// Sluice headers that are message content, not envelope.
fn is_carried(lower: &str) -> bool {
    lower == CURSOR_HEADER
        || lower == SLICE_HEADER
        || lower == crate::message::REQUEST_NAME_HEADER
        || lower == "sluice-causation-id"
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

/// Reads a message published by [`headers`]. The channel is taken from the
/// subject (`sluice.<channel>` or `sluice-cont.<handler>.<channel>`).
pub fn decode(subject: &str, headers: Option<&HeaderMap>, body: &[u8]) -> Result<Decoded, String> {
    let channel = if let Some(rest) = subject.strip_prefix(&format!("{CONT_PREFIX}.")) {
        rest.split_once('.').map(|(_, c)| c).unwrap_or(rest)
    } else {
        subject
            .strip_prefix(&format!("{PREFIX}."))
            .ok_or_else(|| format!("subject {subject:?} is not a sluice channel"))?
    };
    crate::names::check_channel(channel).map_err(|e| format!("subject {subject:?}: {e}"))?;
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let id = get(H_ID)
        .or_else(|| get(NATS_MSG_ID))
        .ok_or_else(|| "message has neither Sluice-Id nor Nats-Msg-Id".to_owned())?;
    let kind = match get(H_KIND).as_deref() {
        None => MessageKind::Command,
        Some(k) => MessageKind::parse(k).ok_or_else(|| format!("unknown Sluice-Kind {k:?}"))?,
    };
    let mut user: Headers = Vec::new();
    if let Some(h) = headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case(NATS_MSG_ID) || (is_reserved(name)) {
                continue;
            }
            for v in values {
                user.push((name.to_owned(), v.as_str().to_owned()));
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
    let ms = |name: &str| {
        get(name)
            .map(|s| s.parse::<i64>().map_err(|_| format!("bad {name} {s:?}")))
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
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip() {
        let m = Message {
            id: "m1".into(),
            channel: "task.reminder".into(),
            kind: MessageKind::Event,
            headers: vec![
                ("trace".into(), "abc".into()),
                ("Nats-Msg-Id".into(), "spoofed".into()),
                (CURSOR_HEADER.into(), "40".into()),
                (SLICE_HEADER.into(), "2".into()),
            ],
            body: b"{}".to_vec(),
        };
        let h = headers(&Envelope {
            message: &m,
            dedupe_id: "d1",
            not_before: Some(5),
            expires_at: None,
        });
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("d1"));
        let d = decode("sluice.task.reminder", Some(&h), b"{}").expect("decode");
        assert_eq!(d.message.id, "m1");
        assert_eq!(d.message.channel, "task.reminder");
        assert_eq!(d.message.kind, MessageKind::Event);
        assert_eq!(
            (d.slice, d.cursor.as_deref(), d.not_before),
            (2, Some("40"), Some(5))
        );
        assert!(d.message.headers.contains(&("trace".into(), "abc".into())));
        let c = decode("sluice-cont.h1.task.reminder", Some(&h), b"").expect("decode");
        assert_eq!(c.message.channel, "task.reminder");
    }

    #[test]
    fn a_foreign_message_without_ids_is_rejected() {
        assert!(decode("sluice.x", None, b"{}").is_err());
        assert!(decode("other.x", None, b"{}").is_err());
        let mut h = HeaderMap::new();
        h.insert(H_ID, "m1");
        assert!(decode("sluice.ok", Some(&h), b"{}").is_ok());
        for bad in ["sluice.a..b", "sluice.", "sluice-cont.h.a b"] {
            assert!(decode(bad, Some(&h), b"{}").is_err(), "{bad}");
        }
    }
}
