//! Message <-> request, on both sides of a handler: the channel's mapper
//! component if it has one, JSON passthrough if not. Shared by the pump and
//! by `sluice send`.

use sha2::{Digest, Sha256};

use crate::message::{Message, REQUEST_NAME_HEADER, Request, now_ms};
use crate::registry::PluginSet;
use crate::runtime::{MAX_CALL_BYTES, MapFailure, Post};
use crate::store::NewMessage;

pub use crate::message::CAUSATION_HEADER;

/// Why a message could not become a request, or posts wire messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// The input is poison: dead-letter it now, never retry.
    Poison(String),
    /// The mapper failed (a trap): retry like a handler failure.
    Fault(String),
    /// The host could not map it now (instance pool exhausted, the
    /// channel's mapper removed by a reload): not the message's fault, so it
    /// is handed back without costing an attempt or tripping the breaker.
    Host(String),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::Poison(m) | MapError::Fault(m) | MapError::Host(m) => f.write_str(m),
        }
    }
}

/// Wire message -> request for the handler.
pub async fn to_request(
    set: &PluginSet,
    message: &Message,
    attempt: u32,
) -> Result<Request, MapError> {
    match set.mappers.get(&message.channel) {
        Some(mapper) => {
            let name = &mapper.info().name;
            mapper
                .to_request(message, attempt)
                .await
                .map_err(|f| match f {
                    MapFailure::Rejected(reason) => {
                        MapError::Poison(format!("rejected by mapper {name}: {reason}"))
                    }
                    MapFailure::Host(reason) => {
                        MapError::Host(format!("mapper {name} could not run: {reason}"))
                    }
                    other => MapError::Fault(format!("mapper {name} failed: {other}")),
                })
        }
        // The mapper was removed while the host runs (hot reload): the
        // pump pauses the channel, this covers a message claimed just
        // before; it waits for the mapper rather than passing unmapped.
        None if set.paused_channels.contains(&message.channel) => Err(MapError::Host(format!(
            "the mapper of channel {} was removed; waiting for it to be back",
            message.channel
        ))),
        None => passthrough(message),
    }
}

/// The default mapper: the body must be UTF-8 JSON; the request is named by
/// the `sluice-request` header, else after the channel.
pub fn passthrough(message: &Message) -> Result<Request, MapError> {
    let body = std::str::from_utf8(&message.body)
        .map_err(|e| MapError::Poison(format!("body is not UTF-8 text: {e}")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(body)
        .map_err(|e| MapError::Poison(format!("body is not valid JSON: {e}")))?;
    Ok(Request {
        name: message
            .header(REQUEST_NAME_HEADER)
            .unwrap_or(&message.channel)
            .to_owned(),
        body: body.to_owned(),
    })
}

/// A handler's posts -> wire messages, through each target channel's mapper.
/// Ids are derived from the consumed message, the handler, the slice cursor
/// and the post's index, so re-running the same call posts the same ids and
/// the queue's idempotency drops the repeat. The messages together are held
/// to the call's byte budget ([`MAX_CALL_BYTES`]): a mapper may make each
/// post larger than the handler wrote it, and one call may post 10,000.
///
/// A post to a channel whose mapper was removed by a reload waits for it
/// (`MapError::Host`) instead of going out unmapped; a mapper that rejects
/// a post or returns a header no transport can carry makes the call's
/// outcome permanent (`MapError::Poison`); a mapper trap is a fault.
pub async fn to_messages(
    set: &PluginSet,
    posts: &[Post],
    cause: &Message,
    consumer: &str,
    cursor: Option<&str>,
) -> Result<Vec<NewMessage>, MapError> {
    let now = now_ms();
    let mut out = Vec::with_capacity(posts.len());
    let mut bytes = 0usize;
    for (index, post) in posts.iter().enumerate() {
        let request = Request {
            name: post.name.clone(),
            body: post.body.clone(),
        };
        let mut headers = post.headers.clone();
        let body = match set.mappers.get(&post.channel) {
            Some(mapper) => {
                let name = &mapper.info().name;
                let what = format!("post #{index} to {}: mapper {name}", post.channel);
                let outgoing = mapper.to_message(&request).await.map_err(|f| match f {
                    MapFailure::Rejected(reason) => {
                        MapError::Poison(format!("{what} rejected it: {reason}"))
                    }
                    MapFailure::Host(reason) => {
                        MapError::Host(format!("{what} could not run: {reason}"))
                    }
                    other => MapError::Fault(format!("{what} failed: {other}")),
                })?;
                for (k, v) in &outgoing.headers {
                    crate::message::check_header(k, v).map_err(|reason| {
                        MapError::Poison(format!("{what} returned a bad header: {reason}"))
                    })?;
                }
                headers.extend(outgoing.headers);
                outgoing.body
            }
            None if set.paused_channels.contains(&post.channel) => {
                return Err(MapError::Host(format!(
                    "post #{index} to {}: the channel's mapper was removed; waiting for it to be back",
                    post.channel
                )));
            }
            None => {
                if post.name != post.channel {
                    headers.push((REQUEST_NAME_HEADER.to_owned(), post.name.clone()));
                }
                post.body.clone().into_bytes()
            }
        };
        headers.push((CAUSATION_HEADER.to_owned(), cause.id.clone()));
        bytes = bytes.saturating_add(body.len()).saturating_add(
            headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + std::mem::size_of::<(String, String)>())
                .sum(),
        );
        if bytes > MAX_CALL_BYTES {
            return Err(MapError::Poison(format!(
                "sandbox limit: the call's {} posts map to more than {MAX_CALL_BYTES} bytes (at post #{index} to {})",
                posts.len(),
                post.channel
            )));
        }
        let visible_at = match (post.launch_at_ms, post.delay_ms) {
            (Some(at), _) => i64::try_from(at).unwrap_or(i64::MAX),
            (None, Some(d)) => now.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
            (None, None) => now,
        };
        out.push(NewMessage {
            message: Message {
                id: post_id(&cause.id, consumer, cursor, index),
                channel: post.channel.clone(),
                kind: post.kind,
                headers,
                body,
            },
            visible_at,
            expires_at: post
                .expires_at_ms
                .map(|e| i64::try_from(e).unwrap_or(i64::MAX)),
        });
    }
    Ok(out)
}

/// Deterministic id of post `index` made while handling `cause`.
pub fn post_id(cause: &str, consumer: &str, cursor: Option<&str>, index: usize) -> String {
    let mut h = Sha256::new();
    for part in [cause, consumer, cursor.unwrap_or("")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(index.to_le_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageKind;

    fn msg(body: &[u8]) -> Message {
        Message {
            id: "m1".into(),
            channel: "orders".into(),
            kind: MessageKind::Command,
            headers: vec![],
            body: body.to_vec(),
        }
    }

    #[test]
    fn passthrough_names_the_request_after_the_channel_or_header() {
        assert_eq!(
            passthrough(&msg(br#"{"a":1}"#)),
            Ok(Request {
                name: "orders".into(),
                body: r#"{"a":1}"#.into()
            })
        );
        let mut m = msg(b"{}");
        m.headers
            .push((REQUEST_NAME_HEADER.into(), "PlaceOrder".into()));
        assert_eq!(passthrough(&m).map(|r| r.name), Ok("PlaceOrder".into()));
    }

    #[test]
    fn passthrough_rejects_non_json_as_poison() {
        match passthrough(&msg(b"{not json")) {
            Err(MapError::Poison(r)) => assert!(r.starts_with("body is not valid JSON"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            passthrough(&msg(&[0xff, 0xfe])),
            Err(MapError::Poison(_))
        ));
    }

    #[test]
    fn post_ids_are_deterministic_and_distinct() {
        let a = post_id("m1", "h", None, 0);
        assert_eq!(a, post_id("m1", "h", None, 0));
        assert_ne!(a, post_id("m1", "h", None, 1));
        assert_ne!(a, post_id("m1", "h2", None, 0));
        assert_ne!(a, post_id("m1", "h", Some("10"), 0));
        assert_eq!(a.len(), 32);
    }

    fn post(channel: &str, body: String, headers: usize) -> Post {
        Post {
            channel: channel.into(),
            name: channel.into(),
            body,
            kind: MessageKind::Command,
            headers: (0..headers)
                .map(|i| (format!("h{i}"), String::new()))
                .collect(),
            delay_ms: None,
            launch_at_ms: None,
            expires_at_ms: None,
        }
    }

    #[tokio::test]
    async fn mapped_posts_are_held_to_the_call_budget() {
        let set = PluginSet::default();
        let cause = msg(b"{}");
        let posts: Vec<Post> = (0..65)
            .map(|_| post("out", "x".repeat(1 << 20), 0))
            .collect();
        let err = to_messages(&set, &posts, &cause, "h", None).await.err();
        assert!(err.is_some_and(|e| e.to_string().contains("posts map to more than")));
        let posts: Vec<Post> = (0..10)
            .map(|_| post("out", "x".repeat(1 << 20), 0))
            .collect();
        assert_eq!(
            to_messages(&set, &posts, &cause, "h", None)
                .await
                .map(|m| m.len()),
            Ok(10)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        #[test]
        fn any_posts_map_without_panic_to_distinct_ids(
            posts in proptest::collection::vec(
                ("[a-z]{1,8}(\\.[a-z]{1,8}){0,2}", "\\PC{0,64}", 0usize..8, proptest::option::of(proptest::prelude::any::<u64>()), proptest::option::of(proptest::prelude::any::<u64>())),
                0..40,
            ),
            cursor in proptest::option::of("\\PC{0,16}"),
        ) {
            let posts: Vec<Post> = posts
                .into_iter()
                .map(|(c, b, h, delay, at)| Post { delay_ms: delay, launch_at_ms: at, ..post(&c, b, h) })
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread().build();
            let out = rt
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?
                .block_on(to_messages(&PluginSet::default(), &posts, &msg(b"{}"), "h", cursor.as_deref()));
            let out = out.map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(out.len(), posts.len());
            let mut ids: Vec<&str> = out.iter().map(|m| m.message.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            proptest::prop_assert_eq!(ids.len(), posts.len());
            for m in &out {
                proptest::prop_assert!(m.visible_at >= 0);
            }
        }
    }
}
