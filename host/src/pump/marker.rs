//! A job's commit marker in the shared state store (`[nats] shared_state`,
//! see `crate::state` and its `remote.rs`): the outcome and posts of a call
//! whose state commit the store took, so that any host that receives the
//! job again (after a crash before the ack, or a slow host's delivery
//! handed to another) records exactly that outcome and those posts
//! instead of running it again. The marker is stored in the same atomic
//! batch as the state writes, so outcome, posts and state are one fact.
//!
//! The body is [`MAGIC`], the length of a JSON head (4 bytes, big endian),
//! the head (outcome, progress, each post without its body but with the
//! body's length), then the posts' bodies as they are, one after another.
//! Post bodies are not put in JSON: serde writes a `Vec<u8>` as an array
//! of numbers, up to 4 bytes per byte, so a post of a quarter of the
//! server's `max_payload` made a marker too large to store and the job
//! was dead-lettered. A body that is JSON from its first byte is a marker
//! written before this layout (bodies as arrays) and is still read.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::{Message, SLICE_HEADER, now_ms};
use crate::store::{ClaimedJob, Commit, Finish, NewMessage};
use crate::transport::Settle;

/// The first bytes of a marker body (never `{`, so an older JSON marker is
/// told apart).
const MAGIC: &[u8; 4] = b"SLM2";

/// The marker's head (JSON); the post bodies follow it.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    /// The handler's result (a finished job).
    result: Option<String>,
    /// The next slice: cursor and Unix ms it runs at (a continued job).
    next: Option<(String, i64)>,
    /// Last progress reported.
    progress: Option<(u8, Option<String>)>,
    /// The posts, mapped to wire form, with their deterministic ids; each
    /// message's body is empty here and `body_len` bytes follow the head.
    posts: Vec<PostHead>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PostHead {
    message: Message,
    body_len: usize,
    visible_at: i64,
    expires_at: Option<i64>,
}

/// A marker written before [`MAGIC`] (whole JSON, bodies as arrays).
#[derive(Debug, Deserialize)]
struct Legacy {
    result: Option<String>,
    next: Option<(String, i64)>,
    progress: Option<(u8, Option<String>)>,
    posts: Vec<LegacyPost>,
}

#[derive(Debug, Deserialize)]
struct LegacyPost {
    message: Message,
    visible_at: i64,
    expires_at: Option<i64>,
}

/// Names one commit of `job`: its id, its slice number and cursor (a
/// handler that polls may continue with the same cursor twice), the same
/// on every host (a hash, so any id fits in one subject token).
pub(crate) fn commit_name(job: &ClaimedJob) -> String {
    commit_name_of(&job.job_id, &job.message, job.cursor.as_deref())
}

/// [`commit_name`] from the parts of a delivery.
pub(crate) fn commit_name_of(job_id: &str, message: &Message, cursor: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(job_id.as_bytes());
    h.update([0]);
    h.update(message.header(SLICE_HEADER).unwrap_or("0").as_bytes());
    match cursor {
        None => h.update([0]),
        Some(cursor) => {
            h.update([1]);
            h.update(cursor.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The marker of a success (`None` for any other finish: only a success
/// commits state).
pub(crate) fn encode(finish: &Finish) -> Option<Vec<u8>> {
    let (result, next, commit) = match finish {
        Finish::Succeeded { result, commit } => (result.clone(), None, commit),
        Finish::Continue {
            cursor,
            visible_at,
            commit,
        } => (None, Some((cursor.clone(), *visible_at)), commit),
        _ => return None,
    };
    let head = Head {
        result,
        next,
        progress: commit.progress.clone(),
        posts: commit
            .posts
            .iter()
            .map(|p| PostHead {
                message: Message {
                    body: Vec::new(),
                    ..p.message.clone()
                },
                body_len: p.message.body.len(),
                visible_at: p.visible_at,
                expires_at: p.expires_at,
            })
            .collect(),
    };
    let head = serde_json::to_vec(&head).ok()?;
    let head_len = u32::try_from(head.len()).ok()?;
    let bodies: usize = commit.posts.iter().map(|p| p.message.body.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + head.len() + bodies);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&head_len.to_be_bytes());
    out.extend_from_slice(&head);
    for p in &commit.posts {
        out.extend_from_slice(&p.message.body);
    }
    Some(out)
}

/// The head and posts of a marker body, in either layout.
fn parse(body: &[u8]) -> Result<(Head, Vec<NewMessage>), String> {
    let bad = |why: &str| format!("unreadable commit marker: {why}");
    let Some(rest) = body.strip_prefix(MAGIC.as_slice()) else {
        let m: Legacy = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
        let head = Head {
            result: m.result,
            next: m.next,
            progress: m.progress,
            posts: Vec::new(),
        };
        let posts = m
            .posts
            .into_iter()
            .map(|p| NewMessage {
                message: p.message,
                visible_at: p.visible_at,
                expires_at: p.expires_at,
            })
            .collect();
        return Ok((head, posts));
    };
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let (head, mut bodies) = rest.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
    let mut head: Head = serde_json::from_slice(head).map_err(|e| bad(&e.to_string()))?;
    let mut posts = Vec::with_capacity(head.posts.len());
    for p in std::mem::take(&mut head.posts) {
        let (body, rest) = bodies
            .split_at_checked(p.body_len)
            .ok_or_else(|| bad("a post body is cut short"))?;
        bodies = rest;
        posts.push(NewMessage {
            message: Message {
                body: body.to_vec(),
                ..p.message
            },
            visible_at: p.visible_at,
            expires_at: p.expires_at,
        });
    }
    if !bodies.is_empty() {
        return Err(bad("bytes after the last post"));
    }
    Ok((head, posts))
}

/// What to record and how to settle, from a marker's body.
pub(crate) fn decode(body: &[u8]) -> Result<(Finish, Settle), String> {
    let (m, posts) = parse(body)?;
    let commit = Commit {
        progress: m.progress,
        state: Default::default(),
        posts,
    };
    Ok(match m.next {
        None => (
            Finish::Succeeded {
                result: m.result,
                commit,
            },
            Settle::Ack,
        ),
        Some((cursor, visible_at)) => {
            let wait = u64::try_from(visible_at.saturating_sub(now_ms())).unwrap_or(0);
            (
                Finish::Continue {
                    cursor,
                    visible_at,
                    commit,
                },
                Settle::Continue {
                    delay: std::time::Duration::from_millis(wait),
                },
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageKind;

    #[test]
    fn every_slice_of_a_job_has_a_commit_name_of_its_own() {
        let job = |slice: Option<&str>, cursor: Option<&str>| ClaimedJob {
            job_id: "j".into(),
            consumer: "h".into(),
            message: Message {
                id: "m".into(),
                channel: "c".into(),
                kind: MessageKind::Command,
                headers: slice
                    .map(|s| vec![(SLICE_HEADER.to_owned(), s.to_owned())])
                    .unwrap_or_default(),
                body: Vec::new(),
            },
            attempt: 1,
            cursor: cursor.map(str::to_owned),
            expires_at: None,
        };
        let names = [
            commit_name(&job(None, None)),
            commit_name(&job(Some("1"), Some(""))),
            commit_name(&job(Some("2"), Some(""))),
            commit_name(&job(Some("1"), Some("x"))),
        ];
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert_eq!(
            commit_name(&job(None, None)),
            names[0],
            "the same on every host"
        );
    }

    #[test]
    fn a_marker_gives_back_the_outcome_and_posts_it_was_made_of() {
        let post = NewMessage {
            message: Message {
                id: "m/h/0".into(),
                channel: "out".into(),
                kind: MessageKind::Event,
                headers: vec![("a".into(), "b\nc".into())],
                body: vec![0, 255, 10],
            },
            visible_at: 5,
            expires_at: Some(9),
        };
        let finish = Finish::Succeeded {
            result: Some("{\"value\":3}".into()),
            commit: Commit {
                progress: Some((50, Some("half".into()))),
                state: Default::default(),
                posts: vec![post.clone()],
            },
        };
        let body = encode(&finish).expect("encoded");
        let (back, settle) = decode(&body).expect("decoded");
        assert!(matches!(settle, Settle::Ack));
        let Finish::Succeeded { result, commit } = back else {
            panic!("a success");
        };
        assert_eq!(result.as_deref(), Some("{\"value\":3}"));
        assert_eq!(commit.progress, Some((50, Some("half".into()))));
        assert_eq!(commit.posts.len(), 1);
        assert_eq!(commit.posts[0].message, post.message);
        assert_eq!(commit.posts[0].expires_at, Some(9));
        assert!(encode(&Finish::Expired).is_none());
        assert!(decode(b"{").is_err());
    }

    fn with_post(body: Vec<u8>) -> Finish {
        Finish::Succeeded {
            result: None,
            commit: Commit {
                progress: None,
                state: Default::default(),
                posts: vec![NewMessage {
                    message: Message {
                        id: "m/h/0".into(),
                        channel: "out".into(),
                        kind: MessageKind::Event,
                        headers: Vec::new(),
                        body,
                    },
                    visible_at: 0,
                    expires_at: None,
                }],
            },
        }
    }

    #[test]
    fn a_large_post_costs_its_marker_about_its_own_size() {
        // A 600 KB post must fit a marker under the server's default
        // max_payload (1 MiB); as a JSON array of numbers it took ~2.3 MB.
        let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let marker = encode(&with_post(body.clone())).expect("encoded");
        assert!(marker.len() < body.len() + 512, "{} bytes", marker.len());
        let (Finish::Succeeded { commit, .. }, _) = decode(&marker).expect("decoded") else {
            panic!("a success");
        };
        assert_eq!(commit.posts[0].message.body, body);
        assert!(decode(&marker[..marker.len() - 1]).is_err(), "cut short");
        let mut longer = marker.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes");
    }

    #[test]
    fn a_marker_written_as_json_by_an_older_host_is_still_read() {
        let legacy = serde_json::json!({
            "result": "{\"value\":41}",
            "next": null,
            "progress": null,
            "posts": [{
                "message": {"id": "m/h/0", "channel": "out", "kind": "command",
                    "headers": [], "body": [123, 125]},
                "visible_at": 0,
                "expires_at": null,
            }],
        });
        let (Finish::Succeeded { result, commit }, _) =
            decode(legacy.to_string().as_bytes()).expect("decoded")
        else {
            panic!("a success");
        };
        assert_eq!(result.as_deref(), Some("{\"value\":41}"));
        assert_eq!(commit.posts[0].message.body, b"{}");
    }
}
