//! What a refused compare-and-set looks like, whatever the server's shape.
//!
//! Every shared record (flow slots, cron records, the status board, unique
//! keys, state) moves by compare-and-set: a write that expects the
//! subject's last sequence. A loser must be told apart from a fault: a
//! lost race is an answer ("someone else wrote first": read again), a
//! fault is not. async-nats 0.51 maps only err code 10071 (`wrong last
//! sequence`) to `WrongLastSequence`/`WrongLastRevision`; a replicated
//! stream (`replicas = 3`) answers a write racing another proposal on the
//! same subject with 10164 (`JSStreamWrongLastSequenceConstantErr`,
//! "last sequence by subject mismatch"), which the client reports as
//! `Other`. Other clients (nats.py, nats.rb) treat both codes alike, so
//! does Sluice (review3 R19): without it a lost race on a replicated
//! bucket was an error (a flow slot release that collided stayed taken
//! for its 30 s lease, a cron step failed, a board write was retried as
//! a fault).

use std::error::Error;

use async_nats::jetstream::ErrorCode;

/// The server's codes for a compare-and-set that lost: 10071 (solo or
/// checked) and 10164 (a replicated stream with another write of the
/// subject in flight, or a second expectation on one subject in a batch).
const LOST: [ErrorCode; 2] = [
    ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
    ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
];

/// Whether `err` (a KV update or a publish error, or anything wrapping
/// one) says the server refused the write because the subject's last
/// sequence was not the one expected: another writer won.
pub(crate) fn lost_race(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(u) = e.downcast_ref::<async_nats::jetstream::kv::UpdateError>()
            && u.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
        {
            return true;
        }
        if let Some(p) = e.downcast_ref::<async_nats::jetstream::context::PublishError>()
            && p.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence
        {
            return true;
        }
        if let Some(api) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return LOST.contains(&api.error_code());
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    use async_nats::jetstream::kv::UpdateError;

    use super::*;

    /// The API error a server answers with, as the client decodes it.
    fn api(err_code: u16) -> async_nats::jetstream::Error {
        let json =
            format!(r#"{{"code":400,"err_code":{err_code},"description":"wrong last sequence"}}"#);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("decode {json}: {e}"))
    }

    /// A KV update as async-nats builds it from a publish's answer.
    fn update(err_code: u16) -> UpdateError {
        let kind = if err_code == 10071 {
            PublishErrorKind::WrongLastSequence
        } else {
            PublishErrorKind::Other
        };
        UpdateError::from(PublishError::with_source(kind, api(err_code)))
    }

    #[test]
    fn both_codes_of_a_lost_race_are_a_lost_race_through_any_wrapping() {
        for code in [10071, 10164] {
            assert!(lost_race(&update(code)), "kv update, {code}");
            let publish = PublishError::with_source(PublishErrorKind::Other, api(code));
            assert!(lost_race(&publish), "publish, {code}");
            assert!(lost_race(&api(code)), "api error, {code}");
        }
    }

    #[test]
    fn faults_and_other_refusals_are_not() {
        // Insufficient resources, maximum messages, a timeout.
        for code in [10023, 10077] {
            assert!(!lost_race(&update(code)), "{code}");
        }
        assert!(!lost_race(&PublishError::new(PublishErrorKind::TimedOut)));
        assert!(!lost_race(&std::io::Error::other("down")));
    }
}
