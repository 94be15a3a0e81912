//! The HTTP API over real HTTP (ureq) against the real daemon binary:
//! asynchronous request-reply end to end, job control, channel control,
//! auth and input checks, metrics, and job status across two hosts on
//! JetStream.

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::util::{Daemon, Env, FAST, wait_until};

pub(crate) use crate::util::free_port;

/// FAST plus an `[http]` table on a free port.
pub(crate) fn http_config(extra: &str) -> (String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    (
        format!("{FAST}\n[http]\naddr = \"{addr}\"\n{extra}\n"),
        addr,
    )
}

/// An HTTP client that reports every status (no errors for 4xx/5xx) and
/// does not follow redirects, so the tests see the 303 itself.
pub(crate) struct Api {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

/// Status, headers we look at, and the body parsed as JSON (or the text).
pub(crate) struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub retry_after: Option<String>,
    pub text: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

impl Api {
    pub(crate) fn new(addr: &str, token: Option<&str>) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Api {
            base: format!("http://{addr}"),
            agent,
            token: token.map(str::to_owned),
        }
    }

    /// Waits until the daemon serves (/readyz: on JetStream, once its
    /// streams and consumers are set up).
    pub(crate) fn wait_up(&self, daemon: &Daemon) {
        let ok = wait_until(Duration::from_secs(60), || {
            self.agent
                .get(format!("{}/readyz", self.base))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        assert!(ok, "API did not come up; log:\n{}", daemon.log_text());
    }

    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            builder = builder.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let typed = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some_and(|b| !b.is_empty()) && !typed {
            builder = builder.header("Content-Type", "application/json");
        }
        let request = builder
            .body(body.unwrap_or_default().to_vec())
            .expect("request");
        let mut response = self
            .agent
            .run(request)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, retry_after) = (header("location"), header("retry-after"));
        Reply {
            status: response.status().as_u16(),
            location,
            retry_after,
            text: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    pub(crate) fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], None)
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> Reply {
        self.send("POST", path, &[], Some(body.as_bytes()))
    }

    pub(crate) fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, &[], None)
    }

    /// Posts `body` to `channel`; asserts 202 and returns the first job id.
    pub(crate) fn post_job(&self, channel: &str, body: &str) -> String {
        let r = self.post(&format!("/v1/channels/{channel}/messages"), body);
        assert_eq!(r.status, 202, "{}", r.text);
        r.json()["job_ids"][0].as_str().expect("job id").to_owned()
    }

    /// Polls the job until `f` holds for its status; returns the last reply.
    pub(crate) fn wait_job(
        &self,
        id: &str,
        timeout: Duration,
        mut f: impl FnMut(&Reply) -> bool,
    ) -> Reply {
        let mut last = None;
        let ok = wait_until(timeout, || {
            let r = self.get(&format!("/v1/jobs/{id}"));
            let done = f(&r);
            last = Some(r);
            done
        });
        let last = last.expect("polled");
        assert!(
            ok,
            "job {id}: condition not met in {timeout:?}; last: {} {}",
            last.status, last.text
        );
        last
    }
}

#[test]
fn api_202_poll_303_result_path() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-spin", "test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);

    let r = api.post("/v1/channels/test.spin/messages", r#"{"millis": 1500}"#);
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["job_ids"][0].as_str().expect("job id").to_owned();
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert!(r.json()["message_id"].is_string());

    // While it spins: 200 with its state and a Retry-After.
    let running = api.wait_job(&id, Duration::from_secs(30), |r| {
        r.status == 200 && r.json()["state"] == "running"
    });
    assert_eq!(running.retry_after.as_deref(), Some("1"));
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}/result")).status,
        409,
        "no result before it succeeded"
    );

    let done = api.wait_job(&id, Duration::from_secs(60), |r| r.status == 303);
    let result_path = format!("/v1/jobs/{id}/result");
    assert_eq!(done.location.as_deref(), Some(result_path.as_str()));
    let status = done.json();
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["has_result"], true);
    assert_eq!(status["attempts"], 1);
    assert!(status["finished_at"].as_i64() >= status["started_at"].as_i64());
    let result = api.get(&result_path);
    assert_eq!(result.status, 200);
    assert_eq!(result.json(), serde_json::json!({ "spun_ms": 1500 }));

    // A quick one, and the list shows both, newest first, paged.
    let quick = api.post_job("test.counter", r#"{"amount": 2}"#);
    api.wait_job(&quick, Duration::from_secs(30), |r| r.status == 303);
    // (test-counter's own post waits unrouted on test.counted: not succeeded.)
    let page = api.get("/v1/jobs?state=succeeded&limit=1").json();
    assert_eq!(page["jobs"][0]["id"], quick.as_str());
    let next = page["next"].as_str().expect("next link").to_owned();
    let page2 = api.get(&next).json();
    assert_eq!(page2["jobs"][0]["id"], id.as_str());
    let spins = api.get("/v1/jobs?channel=test.spin&state=succeeded").json();
    assert_eq!(spins["jobs"].as_array().map(Vec::len), Some(1));
    assert!(spins["next"].is_null());
    // The API shuts down with the daemon, which exits cleanly.
    assert!(daemon.stop(Duration::from_secs(30)).success());
}

#[test]
fn api_shows_progress_and_an_estimate_mid_job() {
    let (config, addr) = http_config("");
    let env = Env::new(&["batch-audit"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    // One item per slice: each slice commits its progress.
    let id = api.post_job("audit.batch", r#"{"items": 3000, "slice": 1}"#);
    let mid = api.wait_job(&id, Duration::from_secs(60), |r| {
        let j = r.json();
        let p = j["progress"].as_u64().unwrap_or(0);
        r.status == 200 && (1..100).contains(&p)
    });
    let j = mid.json();
    assert!(
        j["progress_note"]
            .as_str()
            .is_some_and(|n| n.starts_with("audited ")),
        "{j}"
    );
    assert!(
        j["estimate_ms"].as_i64().is_some(),
        "an estimate once progress is known: {j}"
    );
    assert!(j["slices"].as_u64() > Some(0));
    let done = api.wait_job(&id, Duration::from_secs(120), |r| r.status == 303);
    assert_eq!(done.json()["progress"], 100);
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}/result")).json(),
        serde_json::json!({ "audited": 3000 })
    );
}

#[test]
fn api_cancels_a_queued_and_a_running_job() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-spin"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);

    // Queued for later: cancelled at once.
    let r = api.post(
        "/v1/channels/test.spin/messages?delay=1h",
        r#"{"millis": 1}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let queued = r.json()["job_ids"][0].as_str().expect("id").to_owned();
    assert_eq!(
        api.get(&format!("/v1/jobs/{queued}")).json()["state"],
        "scheduled"
    );
    let r = api.delete(&format!("/v1/jobs/{queued}"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["state"], "cancelled");
    assert_eq!(env.job(&queued).state, JobState::Cancelled);
    assert_eq!(
        api.delete(&format!("/v1/jobs/{queued}")).status,
        409,
        "already ended"
    );

    // Running: the guest is interrupted and the job recorded cancelled,
    // not handed back.
    let long = api.post_job("test.spin", r#"{"millis": 60000}"#);
    api.wait_job(&long, Duration::from_secs(30), |r| {
        r.json()["state"] == "running"
    });
    let r = api.delete(&format!("/v1/jobs/{long}"));
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["state"], "cancelled", "{j}");
    assert!(
        j["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cancelled by an operator"))
    );
    daemon.wait_log(
        &["outcome=\"cancelled\"", &long],
        1,
        Duration::from_secs(10),
    );
    // The daemon keeps serving: the next job runs.
    let next = api.post_job("test.spin", r#"{"millis": 10}"#);
    api.wait_job(&next, Duration::from_secs(30), |r| r.status == 303);
    assert_eq!(env.job(&long).state, JobState::Cancelled);
    assert_eq!(api.delete("/v1/jobs/no-such-job").status, 404);
}

#[test]
fn api_idempotency_key_returns_the_same_job() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let post = || {
        api.send(
            "POST",
            "/v1/channels/test.counter/messages",
            &[("Idempotency-Key", "order-42")],
            Some(br#"{"amount": 5}"#),
        )
    };
    let first = post();
    assert_eq!(first.status, 202, "{}", first.text);
    let second = post();
    assert_eq!(second.status, 202, "{}", second.text);
    let (a, b) = (first.json(), second.json());
    assert_eq!(a["job_ids"], b["job_ids"]);
    assert_eq!(a["message_id"], "order-42");
    assert_eq!(
        (a["duplicate"].as_bool(), b["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(first.location, second.location);
    let jobs = env.wait_settled("test.counter", 1, Duration::from_secs(30));
    assert_eq!(jobs[0].state, JobState::Succeeded);
    assert_eq!(env.state("test-counter", "total").as_deref(), Some("5"));
}

#[test]
fn api_rejects_bad_tokens_and_bad_input_with_json_errors() {
    let (config, addr) = http_config("token = \"s3cret\"\nbody_limit = \"1KiB\"");
    let env = Env::new(&["test-counter", "test-spin"], &config);
    let daemon = env.start();
    let anonymous = Api::new(&addr, None);
    anonymous.wait_up(&daemon);
    let wrong = Api::new(&addr, Some("guess"));
    let api = Api::new(&addr, Some("s3cret"));

    // Probes are open; everything else needs the token.
    assert_eq!(anonymous.get("/readyz").status, 200);
    for (client, expected) in [(&anonymous, 401), (&wrong, 401), (&api, 200)] {
        let r = client.get("/v1/jobs");
        assert_eq!(r.status, expected, "{}", r.text);
        assert!(r.json().is_object());
    }
    let r = anonymous.post("/v1/channels/test.counter/messages", r#"{"amount": 1}"#);
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("Bearer"))
    );
    assert_eq!(anonymous.get("/metrics").status, 401);

    let cases: [(&str, &str, &str, u16); 13] = [
        ("POST", "/v1/channels/bad..name/messages", "{}", 422),
        ("POST", "/v1/channels/.lead/messages", "{}", 422),
        ("POST", "/v1/channels/trail./messages", "{}", 422),
        ("POST", "/v1/channels/a%20b/messages", "{}", 422),
        ("POST", "/v1/channels/a%0Ab/messages", "{}", 422),
        ("POST", "/v1/channels/sluice.%3E/messages", "{}", 422),
        ("POST", "/v1/channels/a*/pause", "", 422),
        (
            "POST",
            "/v1/channels/test.counter/messages",
            "not json",
            422,
        ),
        (
            "POST",
            "/v1/channels/test.counter/messages?delay=soon",
            "{}",
            400,
        ),
        (
            "POST",
            "/v1/channels/test.counter/messages?kind=query",
            "{}",
            400,
        ),
        (
            "POST",
            "/v1/channels/test.counter/messages?colour=red",
            "{}",
            400,
        ),
        ("GET", "/v1/jobs?state=sleeping", "", 400),
        ("GET", "/v1/nowhere", "", 404),
    ];
    for (method, path, body, status) in cases {
        let r = api.send(method, path, &[], Some(body.as_bytes()));
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        let error = r.json()["error"].as_str().map(str::to_owned);
        assert!(
            error
                .as_deref()
                .is_some_and(|e| !e.is_empty() && !e.contains("panicked")),
            "{method} {path}: {}",
            r.text
        );
    }
    let big = format!(r#"{{"amount": 1, "pad": "{}"}}"#, "x".repeat(2048));
    let r = api.post("/v1/channels/test.counter/messages", &big);
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.json()["error"].is_string());
    let r = api.get("/v1/jobs/does-not-exist");
    assert_eq!((r.status, r.json()["error"].is_string()), (404, true));
    // Nothing above queued anything.
    assert!(env.jobs("test.counter").is_empty());
    assert_eq!(api.delete("/v1/jobs").status, 405);
}

#[test]
fn paused_channels_keep_their_messages_until_resumed_from_the_cli() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-counter", "test-spin"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    assert_eq!(
        env.ok(&["pause", "test.counter"]).trim(),
        "test.counter paused"
    );
    daemon.wait_log(
        &["channel paused by operator", "test.counter"],
        1,
        Duration::from_secs(10),
    );
    let ids: Vec<String> = (1..=3)
        .map(|n| api.post_job("test.counter", &format!(r#"{{"amount": {n}}}"#)))
        .collect();
    // Another channel keeps working meanwhile.
    let spin = api.post_job("test.spin", r#"{"millis": 200}"#);
    api.wait_job(&spin, Duration::from_secs(30), |r| r.status == 303);
    for id in &ids {
        assert_eq!(env.job(id).state, JobState::Queued, "paused: stays queued");
    }
    let channels = api.get("/v1/channels").json();
    let counter = channels["channels"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["channel"] == "test.counter"))
        .cloned()
        .expect("test.counter listed");
    assert_eq!(counter["paused"], true);
    assert_eq!(
        env.ok(&["resume", "test.counter"]).trim(),
        "test.counter resumed"
    );
    let jobs = env.wait_settled("test.counter", 3, Duration::from_secs(30));
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
    assert_eq!(env.state("test-counter", "total").as_deref(), Some("6"));
    // The same API through HTTP, with a clear answer for a second pause.
    let r = api.post("/v1/channels/test.counter/pause", "");
    assert_eq!((r.status, r.json()["changed"].as_bool()), (200, Some(true)));
    let r = api.post("/v1/channels/test.counter/pause", "");
    assert_eq!(r.json()["changed"], false);
}

#[test]
fn cli_pause_without_a_daemon_says_so() {
    let (config, _addr) = http_config("");
    let env = Env::new(&[], &config);
    let out = env.sluice(&["pause", "test.counter"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no sluice daemon answers"), "{err}");
}

/// The value of a metric line `name{labels} value` (or `name value`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn api_metrics_dead_letters_and_plugins_reflect_the_work_done() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    for n in 1..=4 {
        api.post_job("test.counter", &format!(r#"{{"amount": {n}}}"#));
    }
    // Not a Count: a permanent error, dead at once.
    let poison = api.post_job("test.counter", r#"{"nothing": true}"#);
    env.wait_settled("test.counter", 5, Duration::from_secs(30));

    let m = api.get("/metrics");
    assert_eq!(m.status, 200);
    let t = &m.text;
    // The gauge holds what an operator acts on (waiting, running, dead),
    // read from the index like the dashboard's census; finished jobs are
    // counted by the outcomes counter below.
    assert_eq!(
        metric(
            t,
            r#"sluice_jobs{channel="test.counter",state="succeeded"}"#
        ),
        None,
        "{t}"
    );
    assert_eq!(
        metric(t, r#"sluice_jobs{channel="test.counter",state="queued"}"#),
        Some(0.0),
        "{t}"
    );
    assert_eq!(
        metric(t, r#"sluice_jobs{channel="test.counter",state="dead"}"#),
        Some(1.0),
        "{t}"
    );
    assert_eq!(metric(t, "sluice_dead_letters"), Some(1.0), "{t}");
    assert_eq!(
        metric(
            t,
            r#"sluice_job_outcomes_total{handler="test-counter",outcome="succeeded"}"#
        ),
        Some(4.0),
        "{t}"
    );
    // Every recorded call, conflicts (re-runs of concurrent state writes)
    // included: at least the five outcomes.
    assert!(
        metric(
            t,
            r#"sluice_handler_duration_seconds_count{handler="test-counter"}"#
        )
        .is_some_and(|n| n >= 5.0),
        "{t}"
    );
    assert!(
        metric(t, "sluice_fuel_used_total").is_some_and(|f| f > 0.0),
        "{t}"
    );
    assert_eq!(metric(t, "sluice_in_flight"), Some(0.0), "{t}");
    assert_eq!(metric(t, "sluice_reloads_total"), Some(0.0), "{t}");
    assert_eq!(metric(t, "sluice_outbox_pending"), Some(0.0), "{t}");

    let dead = api.get("/v1/dead-letters").json();
    assert_eq!(dead["jobs"][0]["id"], poison.as_str());
    assert!(
        dead["jobs"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("amount"))
    );
    let r = api.post(&format!("/v1/dead-letters/{poison}/replay"), "");
    assert_eq!(r.status, 200, "{}", r.text);
    let again = api.wait_job(&poison, Duration::from_secs(30), |r| {
        let j = r.json();
        j["replays"] == 1 && j["state"] == "dead"
    });
    assert_eq!(again.status, 200);
    let r = api.post("/v1/dead-letters/replay", "");
    assert_eq!(r.json()["replayed"], serde_json::json!([poison]));
    let ok = env
        .jobs("test.counter")
        .into_iter()
        .find(|j| j.state == JobState::Succeeded)
        .expect("one");
    assert_eq!(
        api.post(&format!("/v1/dead-letters/{}/replay", ok.id), "")
            .status,
        409
    );

    let plugins = api.get("/v1/plugins").json();
    assert_eq!(plugins["plugins"][0]["name"], "test-counter");
    assert_eq!(plugins["files"][0]["error"], Value::Null);
    let ready = api.get("/readyz");
    assert_eq!(
        (ready.status, ready.json()["store"].as_str()),
        (200, Some("ok"))
    );
}

#[test]
fn jetstream_job_status_is_right_on_the_host_that_did_not_run_it() {
    let nats = NatsServer::start();
    let (config_a, addr_a) = http_config(&format!(
        "[nats]\nurl = \"{}\"\nack_wait = \"10s\"",
        nats.url()
    ));
    let (config_b, addr_b) = http_config(&format!(
        "[nats]\nurl = \"{}\"\nack_wait = \"10s\"",
        nats.url()
    ));
    let a = Env::new(&["test-counter"], &config_a);
    let b = Env::new(&["test-counter"], &config_b);
    let host_a = a.start();
    let api_a = Api::new(&addr_a, None);
    api_a.wait_up(&host_a);
    // Host A serves the API but does not run the channel: B does.
    assert_eq!(
        api_a.post("/v1/channels/test.counter/pause", "").status,
        200
    );
    host_a.wait_log(
        &["channel paused by operator", "test.counter"],
        1,
        Duration::from_secs(10),
    );
    let host_b = b.start();
    Api::new(&addr_b, None).wait_up(&host_b);
    let ready = api_a.get("/readyz").json();
    assert_eq!(ready["nats"], "connected", "{ready}");

    let id = api_a.post_job("test.counter", r#"{"amount": 7}"#);
    let done = api_a.wait_job(&id, Duration::from_secs(60), |r| r.status == 303);
    assert_eq!(done.json()["state"], "succeeded");
    assert_eq!(b.job(&id).state, JobState::Succeeded, "host B ran it");
    assert!(a.jobs("test.counter").is_empty(), "host A never ran it");
    let result = api_a.get(&format!("/v1/jobs/{id}/result"));
    assert_eq!(result.status, 200, "{}", result.text);
    assert_eq!(b.state("test-counter", "total").as_deref(), Some("7"));
}

#[test]
fn jetstream_cancel_of_a_running_job_is_final() {
    let nats = NatsServer::start();
    let (config, addr) = http_config(&format!(
        "[nats]\nurl = \"{}\"\nack_wait = \"2s\"",
        nats.url()
    ));
    let env = Env::new(&["test-spin"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let id = api.post_job("test.spin", r#"{"millis": 60000}"#);
    api.wait_job(&id, Duration::from_secs(30), |r| {
        r.status == 200 && r.json()["state"] == "running"
    });
    let r = api.delete(&format!("/v1/jobs/{id}"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["state"], "cancelled");
    // A job that outlasts the ack wait: had the cancelled message not been
    // acked, JetStream would have redelivered it meanwhile.
    let next = api.post_job("test.spin", r#"{"millis": 2500}"#);
    api.wait_job(&next, Duration::from_secs(60), |r| r.status == 303);
    let job = env.job(&id);
    assert_eq!((job.state, job.attempts), (JobState::Cancelled, 1));
    assert!(daemon.stop(Duration::from_secs(30)).success());
}
