//! Property tests of what the host does with a mapper's outputs (issue
//! 11): a real mapper component (test-echo-mapper) returns whatever
//! headers, body, request name and reason proptest makes up, and the host
//! either carries it exactly or refuses it as poison with the reason;
//! never a panic, a retryable fault or a header no transport can carry.

use proptest::prelude::*;
use sluice::message::{CAUSATION_HEADER, Message, MessageKind, check_header};
use sluice::pump::{MapError, to_messages, to_request};
use sluice::registry::PluginSet;
use sluice::runtime::{Post, Runtime, RuntimeConfig};

/// One runtime and the echo mapper on `test.echo`, shared by every case
/// (a case is a call or two, as in the pump).
fn fixture() -> &'static (tokio::runtime::Runtime, PluginSet) {
    static FIXTURE: std::sync::OnceLock<(tokio::runtime::Runtime, PluginSet)> =
        std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio");
        let bytes = std::fs::read(crate::util::built_plugins().join("test-echo-mapper.wasm"))
            .expect("read test-echo-mapper");
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let mapper = rt.block_on(runtime.load(bytes)).expect("load");
        let mut set = PluginSet::default();
        set.mappers.insert("test.echo".into(), mapper);
        (rt, set)
    })
}

/// Header names: well-formed, reserved, the fields a message carries, and
/// arbitrary text (spaces, ':', control characters, unicode, empty, long).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9-]{1,16}",
        Just(CAUSATION_HEADER.to_owned()),
        Just("sluice-request".to_owned()),
        Just("Sluice-Id".to_owned()),
        Just("Nats-Msg-Id".to_owned()),
        Just(String::new()),
        "\\PC{1,12}",
        "[ -~]{1,12}",
        "[a-z]{257,260}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,24}", "\\PC{0,24}", "[a\r\n]{0,4}", "\\p{Cc}{0,3}",]
}

fn reason() -> impl Strategy<Value = Option<String>> {
    proptest::option::weighted(0.2, "\\PC{0,48}")
}

fn cause() -> Message {
    Message {
        id: "cause-1".into(),
        channel: "in".into(),
        kind: MessageKind::Command,
        headers: Vec::new(),
        body: b"{}".to_vec(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_posts_mapper_output_is_carried_exactly_or_refused_as_poison(
        headers in proptest::collection::vec((name(), value()), 0..8),
        post_headers in proptest::collection::vec(("[a-z]{1,8}", "[a-z]{0,8}"), 0..3),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        reject in reason(),
    ) {
        let (rt, set) = fixture();
        let mut out = serde_json::json!({ "headers": headers, "body": body });
        if let Some(r) = &reject {
            out["reject"] = serde_json::json!(r);
        }
        let post = Post {
            channel: "test.echo".into(),
            name: "echo".into(),
            body: out.to_string(),
            kind: MessageKind::Event,
            headers: post_headers.clone(),
            delay_ms: None,
            launch_at_ms: None,
            expires_at_ms: None,
        };
        let got = rt.block_on(to_messages(set, &[post], &cause(), "h", None));
        let carriable = headers.iter().all(|(k, v)| check_header(k, v).is_ok());
        match got {
            Ok(messages) => {
                prop_assert!(reject.is_none() && carriable);
                prop_assert_eq!(messages.len(), 1);
                let m = &messages[0].message;
                prop_assert_eq!(&m.channel, "test.echo");
                prop_assert_eq!(&m.body, &body);
                let mut want = post_headers.clone();
                want.extend(headers.iter().cloned());
                want.push((CAUSATION_HEADER.to_owned(), "cause-1".to_owned()));
                prop_assert_eq!(&m.headers, &want);
            }
            Err(MapError::Poison(why)) => {
                prop_assert!(why.starts_with("post #0 to test.echo: mapper test-echo-mapper"), "{}", why);
                match &reject {
                    Some(r) => prop_assert!(why.ends_with(&format!("rejected it: {r}")), "{}", why),
                    None => {
                        prop_assert!(!carriable);
                        prop_assert!(why.contains("returned a bad header"), "{}", why);
                    }
                }
            }
            Err(other) => prop_assert!(false, "not poison: {:?}", other),
        }
    }

    #[test]
    fn a_messages_mapper_output_is_the_request_or_poison(
        name in prop_oneof!["\\PC{0,32}", "[a-z]{250,260}", "[\r\n\t ]{0,4}"],
        body in "\\PC{0,200}",
        reject in reason(),
    ) {
        let (rt, set) = fixture();
        let mut input = serde_json::json!({ "name": name, "body": body });
        if let Some(r) = &reject {
            input["reject"] = serde_json::json!(r);
        }
        let message = Message {
            id: "m-1".into(),
            channel: "test.echo".into(),
            kind: MessageKind::Command,
            headers: Vec::new(),
            body: input.to_string().into_bytes(),
        };
        match rt.block_on(to_request(set, &message, 1)) {
            Ok(request) => {
                prop_assert!(reject.is_none() && name.len() <= 256);
                prop_assert_eq!(request.name, name);
                prop_assert_eq!(request.body, body);
            }
            Err(MapError::Poison(why)) => {
                prop_assert!(why.starts_with("rejected by mapper test-echo-mapper: "), "{}", why);
                match &reject {
                    Some(r) => prop_assert!(why.ends_with(r.as_str()), "{}", why),
                    None => prop_assert!(why.contains("sandbox limit: request name of"), "{}", why),
                }
            }
            Err(other) => prop_assert!(false, "not poison: {:?}", other),
        }
    }
}
