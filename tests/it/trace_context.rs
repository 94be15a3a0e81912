//! W3C `traceparent` from `sluice post` and `POST /v1/...` through the
//! posts a handler makes: a chain of jobs is one trace, each job's span the
//! parent of the jobs its posts became.

use std::time::Duration;

use sluice::store::JobRecord;
use sluice::telemetry::{self, TraceParent};

use crate::api::{Api, http_config};
use crate::util::{Env, FAST, wait_until};

const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traceparent(job: &JobRecord) -> TraceParent {
    telemetry::from_headers(&job.headers)
        .unwrap_or_else(|| panic!("job {} has no valid traceparent: {:?}", job.id, job.headers))
}

/// Waits for the job test-counter's post became, and checks it is a child
/// of `parent`'s span in `parent`'s trace.
fn assert_child(env: &Env, parent: &JobRecord) -> TraceParent {
    let mut counted = Vec::new();
    let ok = wait_until(Duration::from_secs(60), || {
        counted = env.jobs("test.counted");
        !counted.is_empty()
    });
    assert!(ok, "test-counter posted nothing");
    let parent_tp = traceparent(parent);
    let child = counted
        .iter()
        .map(traceparent)
        .find(|tp| tp.trace_id == parent_tp.trace_id)
        .expect("a post in the parent's trace");
    let job_span = telemetry::job_span_id(&parent.message_id, "test-counter", None, 1);
    assert_eq!(child.span_id, job_span, "the post points at the job's span");
    assert_ne!(child.span_id, parent_tp.span_id);
    child
}

#[test]
fn a_trace_from_sluice_post_continues_through_the_handlers_posts() {
    let env = Env::new(&["test-counter"], FAST);
    let id = env
        .ok(&[
            "post",
            "test.counter",
            r#"{"amount": 1}"#,
            "--header",
            &format!("traceparent={GIVEN}"),
        ])
        .trim()
        .to_owned();
    let bad = env.sluice(&[
        "post",
        "test.counter",
        "{}",
        "--header",
        "traceparent=00-zz-11-01",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a W3C traceparent"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let fresh = env.post("test.counter", r#"{"amount": 2}"#);
    let _daemon = env.start();
    env.wait_settled("test.counter", 2, Duration::from_secs(60));
    let job = env.job(&id);
    assert_eq!(traceparent(&job).to_string(), GIVEN, "kept as given");
    let child = assert_child(&env, &job);
    assert_eq!(child.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    // Without one, a message starts a trace of its own.
    let fresh = env.job(&fresh);
    assert_ne!(traceparent(&fresh).trace_id, child.trace_id);
    let ok = wait_until(Duration::from_secs(30), || {
        env.jobs("test.counted").len() == 2
    });
    assert!(ok);
    assert_child(&env, &fresh);
}

#[test]
fn a_trace_from_an_http_post_continues_through_the_handlers_posts() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let r = api.send(
        "POST",
        "/v1/channels/test.counter/messages",
        &[("traceparent", GIVEN), ("content-type", "application/json")],
        Some(br#"{"amount": 3}"#),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["job_ids"][0].as_str().expect("job id").to_owned();
    api.wait_job(&id, Duration::from_secs(60), |r| r.status == 303);
    let job = env.job(&id);
    assert_eq!(traceparent(&job).to_string(), GIVEN);
    assert_child(&env, &job);
    // An invalid one is replaced by a new trace, never a failed request.
    let r = api.send(
        "POST",
        "/v1/channels/test.counter/messages",
        &[
            ("traceparent", "00-garbage-00f067aa0ba902b7-01"),
            ("content-type", "application/json"),
        ],
        Some(br#"{"amount": 4}"#),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["job_ids"][0].as_str().expect("job id").to_owned();
    let tp = traceparent(&env.job(&id));
    assert_ne!(tp.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
}
