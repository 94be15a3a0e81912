//! Unit tests of the parts that need no host.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::prelude::*;
use crate::{PluginKind, duration_ms, short_type_name};

#[test]
fn describe_builder_collects_channels_and_limits() {
    let d = Describe::handler("batch-audit", "1.2.0")
        .channel("audit.batch")
        .channel("audit.extra")
        .fuel(1_000)
        .memory_bytes(1 << 20)
        .timeout_ms(250);
    assert_eq!(d.name(), "batch-audit");
    assert_eq!(d.version(), "1.2.0");
    assert_eq!(d.kind(), PluginKind::Handler);
    assert_eq!(d.channels(), ["audit.batch", "audit.extra"]);
    assert_eq!(d.fuel_limit(), Some(1_000));
    assert_eq!(d.memory_limit(), Some(1 << 20));
    assert_eq!(d.timeout_limit(), Some(250));
}

#[test]
fn describe_defaults_to_host_limits() {
    let d = Describe::mapper("m", "0.1.0");
    assert_eq!(d.kind(), PluginKind::Mapper);
    assert!(d.channels().is_empty());
    assert_eq!(
        (d.fuel_limit(), d.memory_limit(), d.timeout_limit()),
        (None, None, None)
    );
}

#[test]
fn outcome_helpers() {
    assert_eq!(Outcome::done(), Outcome::Done(None));
    assert_eq!(
        Outcome::done_with(&serde_json::json!({"sent_to": ["a@b"]})),
        Ok(Outcome::Done(Some(r#"{"sent_to":["a@b"]}"#.to_owned())))
    );
    assert_eq!(
        Outcome::continue_at(String::from("100"), Duration::from_millis(5)),
        Outcome::Continue {
            cursor: "100".to_owned(),
            delay: Duration::from_millis(5)
        }
    );
}

#[test]
fn durations_saturate_to_u64_millis() {
    assert_eq!(duration_ms(Duration::from_micros(1_999)), 1);
    assert_eq!(duration_ms(Duration::MAX), u64::MAX);
}

#[test]
fn errors_know_their_kind_and_display_it() {
    let e = Error::retryable("db down");
    assert!(e.is_retryable());
    assert_eq!(e.message(), "db down");
    assert_eq!(e.to_string(), "retryable error: db down");
    let e = Error::permanent("nonsense");
    assert!(!e.is_retryable());
    assert_eq!(e.to_string(), "permanent error: nonsense");
}

#[test]
fn serde_errors_convert_to_permanent() {
    fn parse() -> Result<u32, Error> {
        Ok(serde_json::from_str::<u32>("\"nope\"")?)
    }
    let e = parse().unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().starts_with("JSON error: invalid type"), "{e}");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Wire {
    task: String,
}

#[test]
fn message_json_names_the_type_on_failure() {
    let mut m = Message {
        id: "1".into(),
        channel: "c".into(),
        kind: MessageKind::Event,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: br#"{"task":"x"}"#.to_vec(),
        attempt: 1,
    };
    assert_eq!(m.json::<Wire>(), Ok(Wire { task: "x".into() }));
    assert_eq!(m.header("content-type"), Some("application/json"));
    m.body = b"{}".to_vec();
    let err = m.json::<Wire>().unwrap_err();
    assert!(
        err.starts_with("body is not a valid Wire: missing field `task`"),
        "{err}"
    );
}

#[test]
fn request_and_outgoing_json_round_trip() {
    let r = Request::json("Wire", &Wire { task: "t".into() }).unwrap();
    assert_eq!(r.name, "Wire");
    assert_eq!(r.parse::<Wire>(), Ok(Wire { task: "t".into() }));
    let o = Outgoing::json(&Wire { task: "t".into() })
        .unwrap()
        .header("k", "v");
    assert_eq!(o.body, br#"{"task":"t"}"#);
    assert_eq!(
        o.headers,
        [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("k".to_owned(), "v".to_owned())
        ]
    );
}

#[test]
fn post_options_default_to_a_command() {
    let o = PostOptions::new().event().name("N").header("a", "b");
    assert_ne!(o, PostOptions::new());
    assert_eq!(PostOptions::new(), PostOptions::new().command());
    assert_eq!(MessageKind::default(), MessageKind::Command);
}

#[test]
fn short_type_names_drop_module_paths() {
    assert_eq!(short_type_name::<Wire>(), "Wire");
    assert_eq!(short_type_name::<Vec<Wire>>(), "Vec<Wire>");
    assert_eq!(
        short_type_name::<std::collections::HashMap<String, [u8; 2]>>(),
        "HashMap<String, [u8; 2]>"
    );
    assert_eq!(short_type_name::<u64>(), "u64");
}

mod test_host {
    use super::*;
    use crate::testing::TestHost;

    #[derive(Deserialize)]
    struct Req {
        n: i64,
        #[serde(default)]
        fail: bool,
        #[serde(default)]
        panic: bool,
    }

    struct Effectful;

    impl Handler for Effectful {
        type Request = Req;

        fn describe() -> Describe {
            Describe::handler("effectful", "1.0.0").channel("c")
        }

        fn handle(ctx: &mut Context, req: Req) -> Result<Outcome, Error> {
            let total: i64 = ctx.state().get("total")?.unwrap_or(0);
            ctx.state().set("total", &(total + req.n))?;
            // Reads see the call's own writes.
            assert_eq!(ctx.state().get::<i64>("total")?, Some(total + req.n));
            ctx.state().delete("gone");
            assert_eq!(ctx.state().get_raw("gone"), None);
            ctx.progress(200, Some("clamped"));
            ctx.post_with(
                "out",
                &serde_json::json!({ "n": req.n }),
                PostOptions::new()
                    .event()
                    .name("Out")
                    .header("k", "v")
                    .delay(Duration::from_millis(5)),
            )?;
            if req.panic {
                panic!("asked to panic");
            }
            if req.fail {
                return Err(Error::retryable("asked to fail"));
            }
            match ctx.cursor() {
                None => Ok(Outcome::continue_at("1", Duration::ZERO)),
                Some(_) => Outcome::done_with(&format!("{}:{}", ctx.channel(), ctx.attempt())),
            }
        }
    }

    #[test]
    fn a_successful_call_commits_state_posts_and_progress() {
        let mut host = TestHost::new();
        host.set_state("total", &10).set_state("gone", &1);
        let out = host.handle::<Effectful>(&serde_json::json!({ "n": 5 }));
        assert_eq!(out, Ok(Outcome::continue_at("1", Duration::ZERO)));
        assert_eq!(host.state::<i64>("total"), Some(15));
        assert_eq!(host.state_raw("gone"), None);
        let p = &host.posts()[0];
        assert_eq!(
            (p.channel.as_str(), p.name.as_str(), p.kind, p.delay),
            (
                "out",
                "Out",
                MessageKind::Event,
                Some(Duration::from_millis(5))
            )
        );
        assert_eq!(p.headers, [("k".to_owned(), "v".to_owned())]);
        assert_eq!(p.json::<serde_json::Value>().unwrap()["n"], 5);
        assert_eq!(host.progress().map(|p| p.percent), Some(100));
        // The next slice, as the host would call it.
        host.cursor(Some("1")).channel("other").attempt(2);
        let out = host.handle_json::<Effectful>(r#"{"n": 1}"#);
        assert_eq!(out, Ok(Outcome::Done(Some(r#""other:2""#.into()))));
        assert_eq!(host.state::<i64>("total"), Some(16));
    }

    #[test]
    fn a_failed_call_or_a_bad_body_commits_nothing() {
        let mut host = TestHost::new();
        let err = host
            .handle::<Effectful>(&serde_json::json!({ "n": 5, "fail": true }))
            .unwrap_err();
        assert!(err.is_retryable());
        let err = host.handle_json::<Effectful>(r#"{"n": "x"}"#).unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message().starts_with("request is not a valid Req"),
            "{err}"
        );
        assert_eq!(host.state::<i64>("total"), None);
        assert!(host.posts().is_empty());
        assert!(host.progress().is_none());
    }

    struct Tally;

    impl Handler for Tally {
        type Request = i64;

        fn describe() -> Describe {
            Describe::handler("tally", "1.0.0").channel("c")
        }

        fn handle(ctx: &mut Context, delta: i64) -> Result<Outcome, Error> {
            ctx.state().add("hits", delta);
            ctx.state().add("hits", delta);
            ctx.post("out", &delta)?;
            Ok(Outcome::done())
        }
    }

    #[test]
    fn adds_sum_into_a_json_integer_and_a_bad_add_fails_for_good() {
        let mut host = TestHost::new();
        host.handle::<Tally>(&3).unwrap();
        assert_eq!(host.state::<i64>("hits"), Some(6), "absent counts as 0");
        host.handle::<Tally>(&-10).unwrap();
        assert_eq!(host.state_raw("hits"), Some(&b"-14"[..]));
        // Overflow, or a value that is not an integer: permanent, nothing kept.
        for (start, delta) in [
            (serde_json::json!(i64::MAX), 1),
            (serde_json::json!("7"), 1),
        ] {
            let mut host = TestHost::new();
            host.set_state("hits", &start);
            let err = host.handle::<Tally>(&delta).unwrap_err();
            assert!(!err.is_retryable(), "{err}");
            assert!(err.message().contains("state-add on key \"hits\""), "{err}");
            assert_eq!(host.state::<serde_json::Value>("hits"), Some(start));
            assert!(host.posts().is_empty());
        }
    }

    #[test]
    fn a_panicking_handler_leaves_no_call_behind() {
        let mut host = TestHost::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            host.handle::<Effectful>(&serde_json::json!({ "n": 1, "panic": true }))
        }));
        assert!(panicked.is_err());
        assert!(host.posts().is_empty());
        // Effects outside a call panic again, with the way to test them.
        let outside = std::panic::catch_unwind(|| {
            let ctx =
                crate::__private::bindings::handler::exports::sluice::plugin::handler::JobContext {
                    job_id: "j".into(),
                    message_id: "m".into(),
                    channel: "c".into(),
                    attempt: 1,
                    headers: vec![],
                    cursor: None,
                };
            crate::Context::new(ctx, "c".into()).progress(1, None)
        });
        let message = outside.unwrap_err();
        let message = message
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| message.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(message.contains("TestHost"), "{message}");
    }
}
