//! A job's commit marker in the shared state store (`[nats] shared_state`,
//! see `crate::state` and its `remote.rs`): the outcome and posts of a call
//! whose state commit the store took, so that any host that receives the
//! job again (after a crash before the ack, or a slow host's delivery
//! handed to another) records exactly that outcome and those posts
//! instead of running it again. The marker is stored in the same atomic
//! batch as the state writes, so outcome, posts and state are one fact.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::{Message, SLICE_HEADER, now_ms};
use crate::store::{ClaimedJob, Commit, Finish, NewMessage};
use crate::transport::Settle;

/// The marker's body (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// The handler's result (a finished job).
    result: Option<String>,
    /// The next slice: cursor and Unix ms it runs at (a continued job).
    next: Option<(String, i64)>,
    /// Last progress reported.
    progress: Option<(u8, Option<String>)>,
    /// The posts, mapped to wire form, with their deterministic ids.
    posts: Vec<Post>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Post {
    message: Message,
    visible_at: i64,
    expires_at: Option<i64>,
}

/// Names one commit of `job`: its id, its slice number and cursor (a
/// handler that polls may continue with the same cursor twice), the same
/// on every host (a hash, so any id fits in one subject token).
pub(super) fn commit_name(job: &ClaimedJob) -> String {
    let mut h = Sha256::new();
    h.update(job.job_id.as_bytes());
    h.update([0]);
    h.update(job.message.header(SLICE_HEADER).unwrap_or("0").as_bytes());
    match &job.cursor {
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
pub(super) fn encode(finish: &Finish) -> Option<Vec<u8>> {
    let (result, next, commit) = match finish {
        Finish::Succeeded { result, commit } => (result.clone(), None, commit),
        Finish::Continue {
            cursor,
            visible_at,
            commit,
        } => (None, Some((cursor.clone(), *visible_at)), commit),
        _ => return None,
    };
    let marker = Marker {
        result,
        next,
        progress: commit.progress.clone(),
        posts: commit
            .posts
            .iter()
            .map(|p| Post {
                message: p.message.clone(),
                visible_at: p.visible_at,
                expires_at: p.expires_at,
            })
            .collect(),
    };
    serde_json::to_vec(&marker).ok()
}

/// What to record and how to settle, from a marker's body.
pub(super) fn decode(body: &[u8]) -> Result<(Finish, Settle), String> {
    let m: Marker =
        serde_json::from_slice(body).map_err(|e| format!("unreadable commit marker: {e}"))?;
    let commit = Commit {
        progress: m.progress,
        state: Default::default(),
        posts: m
            .posts
            .into_iter()
            .map(|p| NewMessage {
                message: p.message,
                visible_at: p.visible_at,
                expires_at: p.expires_at,
            })
            .collect(),
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
}
