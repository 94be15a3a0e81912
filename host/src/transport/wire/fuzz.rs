//! Property tests of the wire format (issue 11): whatever a peer on the
//! stream sends (any subject, any header names and values NATS can carry,
//! any body) decodes to a message or an error, never a panic; and every
//! message Sluice can publish comes back as it went out.

use async_nats::HeaderMap;
use proptest::prelude::*;

use super::*;
use crate::message::REQUEST_NAME_HEADER;

/// Header names a peer might send: ours, the server's, and arbitrary ones.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(H_ID.to_owned()),
        Just(H_KIND.to_owned()),
        Just(H_NOT_BEFORE.to_owned()),
        Just(H_EXPIRES.to_owned()),
        Just(NATS_MSG_ID.to_owned()),
        Just(CURSOR_HEADER.to_owned()),
        Just(SLICE_HEADER.to_owned()),
        Just(REQUEST_NAME_HEADER.to_owned()),
        "\\PC{1,24}",
        "[!-~]{1,24}",
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn anything_from_the_stream_decodes_or_is_refused(
        subject in prop_oneof![
            "sluice\\.\\PC{0,24}",
            "sluice-cont\\.\\PC{0,24}",
            "\\PC{0,24}",
        ],
        headers in proptest::collection::vec((any_name(), "\\PC{0,40}"), 0..12),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        fallback in proptest::option::of("\\PC{0,12}"),
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in &headers {
            // What NATS cannot carry never reaches a decoder.
            let _ = append(&mut h, name, value);
        }
        let with = decode(&subject, Some(&h), &body, fallback.clone());
        let without = decode(&subject, None, &body, fallback);
        if let Ok(d) = with {
            prop_assert!(crate::names::check_channel(&d.message.channel).is_ok());
            prop_assert_eq!(d.message.body, body.clone());
        }
        if let Ok(d) = without {
            prop_assert_eq!(d.message.headers.len(), 0);
        }
    }

    #[test]
    fn what_sluice_publishes_comes_back_as_it_went(
        channel in "[a-z0-9_-]{1,8}(\\.[a-z0-9_-]{1,8}){0,3}",
        id in "\\PC{1,40}",
        event in any::<bool>(),
        user in proptest::collection::vec(("x-[a-z0-9-]{1,12}", "[ -~]{0,30}"), 0..6),
        cursor in proptest::option::of("\\PC{0,40}"),
        not_before in proptest::option::of(any::<i64>()),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut sent_headers: Headers = user;
        if let Some(c) = &cursor {
            sent_headers.push((CURSOR_HEADER.to_owned(), c.clone()));
        }
        let m = Message {
            id,
            channel: channel.clone(),
            kind: if event { MessageKind::Event } else { MessageKind::Command },
            headers: sent_headers,
            body,
        };
        let env = Envelope {
            message: &m,
            dedupe_id: "dedupe",
            not_before,
            expires_at: None,
        };
        let h = headers(&env).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let d = decode(&subject(&channel), Some(&h), &m.body, None)
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(&d.message.id, &m.id);
        prop_assert_eq!(&d.message.channel, &m.channel);
        prop_assert_eq!(d.message.kind, m.kind);
        prop_assert_eq!(&d.message.body, &m.body);
        prop_assert_eq!(d.cursor, cursor);
        prop_assert_eq!(d.not_before, not_before);
        let mut sent = m.headers.clone();
        let mut got = d.message.headers.clone();
        sent.sort();
        got.sort();
        prop_assert_eq!(got, sent);
    }
}
