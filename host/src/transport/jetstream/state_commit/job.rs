//! One job's commit as messages of a shared state batch (`state_commit.rs`
//! batches them): a message per key the job changed, with its expected
//! version; a check per key it only read; its marker last.

use std::time::Duration;

use async_nats::HeaderMap;
use tokio::sync::oneshot;

use super::super::super::wire;
use super::MAX_BATCH;
use crate::state::{RemoteBatch, RemoteOutcome};

/// What a message expects of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// Nothing (a blind write).
    Nothing,
    /// The stream's version of the subject (0: none).
    Version(i64),
    /// The version the write holding this pending ticket gets (it was
    /// submitted before on this host).
    After(i64),
}

/// One message of a commit, before the batch's headers are added.
pub(super) struct Msg {
    pub(super) subject: String,
    /// Without the expectation (added when the batch is built).
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
    pub(super) expect: Expect,
    /// The pending ticket this write answers for (key messages).
    pub(super) ticket: Option<i64>,
    /// Set when the batch is built: the version the server checks
    /// (`None`: unchecked, or chained to a job before it in the batch).
    pub(super) check: Option<i64>,
}

/// A key the job only read: checked in the batch, not written (module
/// docs).
pub(super) struct Read {
    /// The key's subject.
    pub(super) subject: String,
    /// [`Expect::Version`] or [`Expect::After`].
    pub(super) expect: Expect,
    /// Set when the batch is built: the version the server checks (`None`:
    /// chained to a write before it in the batch, so it holds exactly when
    /// the batch is stored).
    pub(super) check: Option<i64>,
}

/// One job's commit, waiting for its batch.
pub(super) struct Pending {
    /// Key messages, then the marker last.
    pub(super) messages: Vec<Msg>,
    /// The keys only read.
    pub(super) reads: Vec<Read>,
    pub(super) reply: oneshot::Sender<Result<RemoteOutcome, String>>,
    pub(super) requeued: u8,
}

/// One message as it is sent, before the batch headers.
pub(super) struct Out<'a> {
    pub(super) subject: &'a str,
    pub(super) headers: &'a HeaderMap,
    pub(super) body: &'a [u8],
    /// The version expected, and of which subject (`None`: its own).
    pub(super) check: Option<(Option<&'a str>, i64)>,
}

impl Pending {
    pub(super) fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.body.len()).sum()
    }

    /// The most messages it may send (every read checked).
    pub(super) fn most_messages(&self) -> usize {
        self.messages.len() + self.reads.len() + usize::from(!self.reads.is_empty())
    }

    /// Its messages as sent, once the batch is built: the key messages,
    /// then on the marker's subject either the marker alone, expected
    /// absent, or (keys to check) an empty message expected absent, an
    /// empty one per check but the last, and the marker carrying the last
    /// check. A message carries one expectation, and a check names the
    /// key's subject (`Nats-Expected-Last-Subject-Sequence-Subject`)
    /// while it is stored on the marker's, which keeps only its last
    /// message: the marker. So a read costs the batch a message, and the
    /// stream nothing.
    pub(super) fn outgoing(&self) -> Vec<Out<'_>> {
        let Some((marker, keys)) = self.messages.split_last() else {
            return Vec::new();
        };
        let own = |m: &'_ Msg| m.check.map(|v| (None, v));
        let mut out: Vec<Out<'_>> = keys
            .iter()
            .map(|m| Out {
                subject: &m.subject,
                headers: &m.headers,
                body: &m.body,
                check: own(m),
            })
            .collect();
        let checks: Vec<(&str, i64)> = self
            .reads
            .iter()
            .filter_map(|r| r.check.map(|v| (r.subject.as_str(), v)))
            .collect();
        let on_marker = |body: &'static [u8], check| Out {
            subject: &marker.subject,
            headers: &marker.headers,
            body,
            check,
        };
        match checks.split_last() {
            None => out.push(Out {
                body: &marker.body,
                ..on_marker(&[], own(marker))
            }),
            Some((last, rest)) => {
                out.push(on_marker(&[], own(marker)));
                for &(subject, v) in rest {
                    out.push(on_marker(&[], Some((Some(subject), v))));
                }
                out.push(Out {
                    body: &marker.body,
                    ..on_marker(&[], Some((Some(last.0), last.1)))
                });
            }
        }
        out
    }
}

/// A job's commit as [`prepare`] makes it: its key messages and marker,
/// and its reads; or why it can never be stored.
pub(super) type Prepared = Result<(Vec<Msg>, Vec<Read>), RemoteOutcome>;

/// The messages and checks of `batch` (a job's commit), or why it can
/// never be stored.
pub(super) fn prepare(
    batch: RemoteBatch,
    key_subject: impl Fn(&str) -> String,
    (marker_subject, marker_ttl): (String, Option<Duration>),
    (deleted_header, tombstone_ttl): ((&str, &str), Duration),
    max_payload: usize,
) -> Result<Prepared, String> {
    // A change is a message, and so is a read (checked on the marker's
    // subject, with one message more: `Pending::outgoing`).
    let reads = batch.reads.len() + usize::from(!batch.reads.is_empty());
    let n = batch.changes.len() + 1 + reads;
    if n > MAX_BATCH {
        return Ok(Err(RemoteOutcome::Invalid(format!(
            "a call with shared state may change at most {} keys, or {} changed and only read together; this one changed {} and only read {}",
            MAX_BATCH - 1,
            MAX_BATCH - 2,
            batch.changes.len(),
            batch.reads.len()
        ))));
    }
    let reads: Vec<Read> = batch
        .reads
        .iter()
        .map(|r| Read {
            subject: key_subject(&r.key),
            expect: if r.version < 0 {
                Expect::After(r.version)
            } else {
                Expect::Version(r.version)
            },
            check: None,
        })
        .collect();
    // The longest subject a check on the marker names, for its size.
    let longest_check = reads
        .iter()
        .map(|r| r.subject.as_str())
        .max_by_key(|s| s.len());
    let mut messages = Vec::with_capacity(n);
    for change in batch.changes {
        let mut headers = HeaderMap::new();
        if change.value.is_none() {
            // A tombstone: kept for a while, then pruned by the
            // server (a pruned key reads as absent, version 0: the
            // same value, see `state.rs`).
            wire::append(&mut headers, deleted_header.0, deleted_header.1)
                .map_err(|e| e.to_string())?;
            wire::append(&mut headers, "Nats-TTL", &ttl_header(tombstone_ttl))
                .map_err(|e| e.to_string())?;
        }
        messages.push(Msg {
            subject: key_subject(&change.key),
            headers,
            body: change.value.unwrap_or_default(),
            expect: match change.expect {
                None => Expect::Nothing,
                Some(t) if t < 0 => Expect::After(t),
                Some(v) => Expect::Version(v),
            },
            ticket: Some(change.ticket),
            check: None,
        });
    }
    let mut headers = HeaderMap::new();
    if let Some(ttl) = marker_ttl {
        wire::append(&mut headers, "Nats-TTL", &ttl_header(ttl)).map_err(|e| e.to_string())?;
    }
    messages.push(Msg {
        subject: marker_subject,
        headers,
        body: batch.marker,
        expect: Expect::Version(0),
        ticket: None,
        check: None,
    });
    for (i, m) in messages.iter().enumerate() {
        // With the largest batch headers it can get.
        let mut h = m.headers.clone();
        wire::append(&mut h, EXPECT, &i64::MAX.to_string()).map_err(|e| e.to_string())?;
        if i + 1 == messages.len()
            && let Some(subject) = longest_check
        {
            wire::append(&mut h, EXPECT_SUBJECT, subject).map_err(|e| e.to_string())?;
        }
        batch_headers(&mut h, &crate::message::new_id(), MAX_BATCH, true)?;
        if let Err(e) = wire::check_size(&h, m.body.len(), max_payload) {
            return Ok(Err(RemoteOutcome::Invalid(format!(
                "a shared state commit message for {} is too large: {e}",
                m.subject
            ))));
        }
    }
    Ok(Ok((messages, reads)))
}

/// The expected-version header.
pub(super) const EXPECT: &str = "Nats-Expected-Last-Subject-Sequence";
/// Names the subject [`EXPECT`] is about when it is not the message's own
/// (nats-server 2.11 or later): a check without a write.
pub(super) const EXPECT_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// A `Nats-TTL` value (whole seconds, at least one).
fn ttl_header(ttl: Duration) -> String {
    format!("{}s", ttl.as_secs().max(1))
}

/// Adds the ADR-50 headers of message `seq` (from 1) of batch `id`.
pub(super) fn batch_headers(
    h: &mut HeaderMap,
    id: &str,
    seq: usize,
    commit: bool,
) -> Result<(), String> {
    wire::append(h, "Nats-Batch-Id", id).map_err(|e| e.to_string())?;
    wire::append(h, "Nats-Batch-Sequence", &seq.to_string()).map_err(|e| e.to_string())?;
    if commit {
        wire::append(h, "Nats-Batch-Commit", "1").map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RemoteChange, RemoteRead};

    /// A batch changing `changes` keys (`w0`, `w1`, ...) and only reading
    /// `reads`.
    fn batch(changes: usize, reads: &[(String, i64)]) -> RemoteBatch {
        RemoteBatch {
            plugin: "p".into(),
            changes: (0..changes)
                .map(|i| RemoteChange {
                    key: format!("w{i}"),
                    value: Some(b"1".to_vec()),
                    expect: Some(3),
                    ticket: -1,
                })
                .collect(),
            reads: reads
                .iter()
                .map(|(key, version)| RemoteRead {
                    key: key.clone(),
                    version: *version,
                })
                .collect(),
            job: "j".into(),
            marker: b"marker".to_vec(),
        }
    }

    fn prepared(batch: RemoteBatch) -> Result<Prepared, String> {
        prepare(
            batch,
            |key| format!("k.{key}"),
            ("c.j".into(), None),
            (("Sluice-State", "deleted"), Duration::from_secs(60)),
            1024 * 1024,
        )
    }

    fn job(reads: &[(&str, i64)]) -> Pending {
        let reads: Vec<(String, i64)> = reads.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        let Ok(Ok((messages, reads))) = prepared(batch(1, &reads)) else {
            panic!("prepared");
        };
        Pending {
            messages,
            reads,
            reply: oneshot::channel().0,
            requeued: 0,
        }
    }

    /// (subject, body, check) of each message as sent.
    type Sent = Vec<(String, Vec<u8>, Option<(Option<String>, i64)>)>;

    fn sent(p: &Pending) -> Sent {
        p.outgoing()
            .iter()
            .map(|o| {
                let check = o.check.map(|(s, v)| (s.map(str::to_owned), v));
                (o.subject.to_owned(), o.body.to_vec(), check)
            })
            .collect()
    }

    fn set_checks(p: &mut Pending) {
        for m in &mut p.messages {
            m.check = match m.expect {
                Expect::Version(v) => Some(v),
                _ => None,
            };
        }
        for r in &mut p.reads {
            r.check = match r.expect {
                Expect::Version(v) => Some(v),
                _ => None,
            };
        }
    }

    #[test]
    fn with_no_read_to_check_the_marker_goes_alone_expected_absent() {
        // No reads; or a read of a pending write of this host that goes in
        // the same batch (chained): stored exactly when that write is, so
        // there is nothing to check.
        for (reads, most) in [(vec![], 2), (vec![("a", -7)], 4)] {
            let mut p = job(&reads);
            set_checks(&mut p);
            assert_eq!(p.most_messages(), most, "counted as if checked");
            let want: Sent = vec![
                ("k.w0".into(), b"1".to_vec(), Some((None, 3))),
                ("c.j".into(), b"marker".to_vec(), Some((None, 0))),
            ];
            assert_eq!(sent(&p), want, "{reads:?}");
        }
    }

    #[test]
    fn a_read_is_a_check_on_the_marker_subject_and_never_a_write_of_its_key() {
        let mut p = job(&[("a", 5), ("b", 0), ("c", 9)]);
        set_checks(&mut p);
        assert_eq!(p.most_messages(), 6);
        let out = sent(&p);
        let want: Sent = vec![
            ("k.w0".into(), b"1".to_vec(), Some((None, 3))),
            ("c.j".into(), vec![], Some((None, 0))),
            ("c.j".into(), vec![], Some((Some("k.a".into()), 5))),
            ("c.j".into(), vec![], Some((Some("k.b".into()), 0))),
            (
                "c.j".into(),
                b"marker".to_vec(),
                Some((Some("k.c".into()), 9)),
            ),
        ];
        assert_eq!(out, want);
        assert!(
            !out.iter()
                .any(|(s, _, _)| s.starts_with("k.") && s != "k.w0"),
            "no read key is written"
        );
    }

    #[test]
    fn reads_count_toward_the_batch_limit() {
        let reads: Vec<(String, i64)> = (0..MAX_BATCH).map(|i| (format!("r{i}"), 1)).collect();
        let invalid = |b| matches!(prepared(b), Ok(Err(RemoteOutcome::Invalid(_))));
        // Changes alone: the marker and a message each.
        assert!(!invalid(batch(MAX_BATCH - 1, &[])));
        assert!(invalid(batch(MAX_BATCH, &[])));
        // With reads: the marker, its own check, a check per read.
        assert!(!invalid(batch(0, &reads[..MAX_BATCH - 2])));
        assert!(invalid(batch(0, &reads[..MAX_BATCH - 1])));
        assert!(!invalid(batch(500, &reads[..MAX_BATCH - 502])));
        assert!(invalid(batch(500, &reads[..MAX_BATCH - 501])));
    }
}
