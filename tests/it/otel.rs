//! Spans over OTLP: the real daemon exports to a small OTLP/HTTP receiver
//! in this test (protobuf decoded with the official OpenTelemetry types),
//! and a chain of three jobs started by an HTTP post with the caller's
//! `traceparent` arrives as one trace: each job a span whose parent is the
//! job that posted it, with its five phases as children.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use prost::Message as _;

use crate::api::{Api, http_config};
use crate::util::Env;

const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Spans received, with their resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver on a free loopback port: `POST /v1/traces`.
fn receiver() -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let received: Received = Arc::default();
    let store = received.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let store = store.clone();
                    async move {
                        let request = ExportTraceServiceRequest::decode(body.as_ref())
                            .expect("an OTLP protobuf request");
                        let mut spans = store.lock().expect("lock");
                        for rs in request.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .and_then(|a| a.value.as_ref())
                                .and_then(|v| match &v.value {
                                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    spans.push((service.clone(), span));
                                }
                            }
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    (format!("http://{addr}"), received)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            Some(AnyValue::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_chain_of_jobs_is_one_trace_at_the_collector() {
    let (endpoint, received) = receiver();
    let (config, addr) = http_config("");
    let config = format!("{config}\n[otel]\nendpoint = \"{endpoint}\"\n");
    let env = Env::new(&["test-chain", "test-flaky"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let post = |channel: &str, body: &str| {
        let r = api.send(
            "POST",
            &format!("/v1/channels/{channel}/messages"),
            &[("traceparent", GIVEN), ("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 202, "{}", r.text);
        r.json()["job_ids"][0].as_str().expect("job id").to_owned()
    };
    let first = post("test.chain", r#"{"hops": 2}"#);
    let dead = post("test.flaky", r#"{"permanent": true}"#);
    env.wait_settled("test.chain", 3, Duration::from_secs(60));
    env.wait_settled("test.flaky", 1, Duration::from_secs(60));
    // A stop flushes the exporter.
    assert!(daemon.stop(Duration::from_secs(30)).success());

    let spans = received.lock().expect("lock").clone();
    assert!(spans.iter().all(|(service, _)| service == "sluice"));
    let jobs: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| {
            s.name == "sluice.job" && attr(s, "sluice.channel").as_deref() == Some("test.chain")
        })
        .collect();
    assert_eq!(jobs.len(), 3, "one span per job: {jobs:?}");
    // One trace, the caller's.
    for s in &jobs {
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(attr(s, "sluice.outcome").as_deref(), Some("succeeded"));
        assert_eq!(attr(s, "sluice.plugin").as_deref(), Some("test-chain"));
        assert_eq!(attr(s, "sluice.plugin_version").as_deref(), Some("0.1.0"));
        assert_eq!(attr(s, "sluice.attempt").as_deref(), Some("1"));
        assert!(attr(s, "sluice.fuel").and_then(|f| f.parse::<u64>().ok()) > Some(0));
    }
    // Parent links: the HTTP caller's span -> job 1 -> job 2 -> job 3.
    let by_parent: HashMap<String, &Span> =
        jobs.iter().map(|s| (hex(&s.parent_span_id), *s)).collect();
    let mut at = "00f067aa0ba902b7".to_owned();
    let mut chain = Vec::new();
    while let Some(s) = by_parent.get(&at) {
        chain.push(attr(s, "sluice.job_id").expect("job id"));
        at = hex(&s.span_id);
    }
    assert_eq!(chain.len(), 3, "a chain of parents: {jobs:?}");
    assert_eq!(chain[0], first);
    // Each job's phases are its children, in order and inside it (the job
    // it posted is its child too, checked above).
    for s in &jobs {
        let mut phases: Vec<&Span> = spans
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.parent_span_id == s.span_id && c.name != "sluice.job")
            .collect();
        phases.sort_by_key(|c| c.start_time_unix_nano);
        let names: Vec<&str> = phases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["receive", "map", "handle", "commit", "settle"]);
        for c in &phases {
            assert_eq!(c.trace_id, s.trace_id);
            assert!(c.start_time_unix_nano >= s.start_time_unix_nano);
            assert!(c.end_time_unix_nano <= s.end_time_unix_nano);
        }
    }
    // A dead letter's span says so.
    let failed = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| attr(s, "sluice.job_id").as_deref() == Some(dead.as_str()))
        .expect("the dead job's span");
    assert_eq!(attr(failed, "sluice.outcome").as_deref(), Some("dead"));
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(
        status.message.contains("asked to fail permanently"),
        "{status:?}"
    );
}

#[test]
fn a_state_conflict_rerun_is_an_event_on_the_handle_phase() {
    // One job holds key "k" for 1 s; three more find it taken, give their
    // sandboxes up and run again holding its turn. Each re-run stays in the
    // job's one `handle` phase, as a `state conflict` event on it.
    let (endpoint, received) = receiver();
    let config = format!(
        "{}\n[plugin.test-state]\nconcurrency = 8\n[otel]\nendpoint = \"{endpoint}\"\n",
        crate::util::FAST
    );
    let env = Env::new(&["test-state"], &config);
    let daemon = env.start();
    let first = env.post("test.state", r#"{"key": "k", "hold_ms": 1000}"#);
    crate::util::wait_until(Duration::from_secs(10), || {
        env.job(&first).state == sluice::store::JobState::Running
    });
    for _ in 0..3 {
        env.post("test.state", r#"{"key": "k"}"#);
    }
    let records = env.wait_settled("test.state", 4, Duration::from_secs(60));
    assert!(daemon.stop(Duration::from_secs(30)).success());
    let recorded: u32 = records.iter().map(|j| j.conflicts).sum();
    assert!(recorded >= 3, "the three re-ran: {recorded}");

    let spans = received.lock().expect("lock").clone();
    let mut events = 0;
    for (_, job) in spans.iter().filter(|(_, s)| s.name == "sluice.job") {
        let conflicts: usize = attr(job, "sluice.conflicts")
            .and_then(|c| c.parse().ok())
            .expect("sluice.conflicts");
        let mut phases: Vec<&Span> = spans
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.parent_span_id == job.span_id)
            .collect();
        phases.sort_by_key(|c| c.start_time_unix_nano);
        let names: Vec<&str> = phases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["receive", "map", "handle", "commit", "settle"]);
        let handle = phases[2];
        let reruns: Vec<_> = handle
            .events
            .iter()
            .filter(|e| e.name == "state conflict")
            .collect();
        // A conflict met at the writer counts too, but is no re-run.
        assert!(reruns.len() <= conflicts, "{reruns:?} vs {conflicts}");
        for e in &reruns {
            assert!(e.time_unix_nano >= handle.start_time_unix_nano);
            assert!(e.time_unix_nano <= handle.end_time_unix_nano);
        }
        events += reruns.len();
    }
    assert!(
        events >= 3,
        "each of the three re-runs is an event: {events}"
    );
}
