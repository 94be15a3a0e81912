//! The JetStream wire path attacked with what plugins, clients and operators
//! control: header names and values NATS cannot carry, multi-line cursors
//! and dead-letter reasons, a dotted channel sliced across two hosts, outbox
//! rows the server can never take, and posts over its `max_payload`.

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::api::{Api, free_port, metric};
use crate::nats::NatsServer;
use crate::util::{Env, wait_until};

/// The test-wire handler's policy: one attempt.
const ONE_ATTEMPT: &str = "[plugin.test-wire]\nmax_attempts = 1\n";

fn started(env: &Env) -> crate::util::Daemon {
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    host
}

fn job_of(env: &Env, message_id: &str) -> Option<sluice::store::JobRecord> {
    env.jobs("test.wire")
        .into_iter()
        .find(|j| j.message_id == message_id)
}

fn wait_final(env: &Env, message_id: &str, host: &crate::util::Daemon) -> sluice::store::JobRecord {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(60), || {
        last = job_of(env, message_id);
        last.as_ref()
            .is_some_and(|j| crate::util::is_final(j.state))
    });
    assert!(ok, "job of {message_id}: {last:?}\n{}", host.log_text());
    last.expect("job")
}

#[test]
fn headers_cursors_and_reasons_of_any_bytes_never_stop_the_host_posting() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-wire"], &nats.config("10s", ONE_ATTEMPT));
    let host = started(&env);

    // Where users give headers, a bad one is a one-line error.
    let out = env.sluice(&["post", "test.wire", "{}", "--header", "bad name=1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("header name") && stderr.lines().count() == 1,
        "{stderr}"
    );

    // The host's own fields cannot be set by a producer: no forged
    // causation, slice or attempt.
    for header in ["sluice-causation-id=forged", "Sluice-Attempt=99"] {
        let out = env.sluice(&["post", "test.wire", "{}", "--header", header]);
        assert!(!out.status.success(), "{header} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is reserved") && stderr.lines().count() == 1,
            "{stderr}"
        );
    }

    // A guest that posts with a header NATS cannot carry, or one of the
    // host's own, fails its own call with the reason, at post time.
    for (name, value, says) in [
        ("bad name", "x", "header name"),
        ("ok", "two\nlines", "line break"),
        ("sluice-causation-id", "forged", "is reserved"),
        ("Sluice-Slice", "7", "is reserved"),
    ] {
        let body = serde_json::json!({
            "posts": [{"channel": "test.sink", "headers": [[name, value]]}]
        });
        let id = env.ok(&["post", "test.wire", &body.to_string()]);
        let job = wait_final(&env, id.trim(), &host);
        assert_eq!(job.state, JobState::Dead);
        let error = job.last_error.unwrap_or_default();
        assert!(error.contains(says), "{error}");
    }

    // A multi-line cursor with every kind of byte goes round the stream and
    // comes back as it was, slice after slice.
    let pad = "\nsecond line\r\n 100% ü \u{1} end ";
    let body = serde_json::json!({
        "slices": 3, "cursor_pad": pad,
        "posts": [{"channel": "test.sink", "headers": [["trace-id", "a b ü"]]}]
    });
    let id = env.ok(&["post", "test.wire", &body.to_string()]);
    let job = wait_final(&env, id.trim(), &host);
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    let result: Value = serde_json::from_str(job.result.as_deref().unwrap_or("null")).unwrap();
    assert_eq!(result["slices"], 3);
    assert_eq!(result["cursor"], format!("2{pad}"));

    // A dead-letter reason with newlines is kept whole on the dead-letter
    // stream.
    let reason = "first line\nsecond: line\r\n\tthird ü";
    let body = serde_json::json!({ "permanent": reason });
    let id = env.ok(&["post", "test.wire", &body.to_string()]);
    assert_eq!(wait_final(&env, id.trim(), &host).state, JobState::Dead);
    assert!(wait_until(Duration::from_secs(30), || nats
        .count("SLUICE_DLQ", "sluice-dlq.test.wire")
        >= 3));
    let reasons: Vec<String> = nats
        .messages("SLUICE_DLQ")
        .iter()
        .filter_map(|m| m.headers.get("Sluice-Error").map(|v| v.as_str().to_owned()))
        .map(|v| {
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r == &format!("permanent error: {reason}")),
        "{reasons:?}"
    );

    // And the host still posts: 20 more jobs, 20 more downstream messages.
    let input: String = (0..20)
        .map(|_| r#"{"posts": [{"channel": "test.sink"}]}"#.to_owned() + "\n")
        .collect();
    let out = env.sluice_stdin(&["post", "test.wire"], &input);
    assert!(out.status.success());
    assert!(
        wait_until(Duration::from_secs(60), || nats
            .count("SLUICE", "sluice.test.sink")
            == 3 + 20),
        "{} downstream\n{}",
        nats.count("SLUICE", "sluice.test.sink"),
        host.log_text()
    );
    assert!(!host.log_text().contains("panicked"), "{}", host.log_text());
}

#[test]
fn a_dotted_channel_keeps_its_handler_across_slices_and_hosts() {
    let nats = NatsServer::start();
    let cfg = nats.config("10s", "");
    let a = Env::new(&["test-wire"], &cfg);
    let b = Env::new(&["test-wire"], &cfg);
    let (host_a, host_b) = (started(&a), started(&b));
    let slices: u32 = 12;
    let body = serde_json::json!({ "slices": slices, "spin_ms": 20 });
    let id = a.ok(&["post", "test.wire", &body.to_string()]);
    let id = id.trim();
    let done = |env: &Env| job_of(env, id).filter(|j| j.state == JobState::Succeeded);
    assert!(
        wait_until(Duration::from_secs(90), || done(&a).or(done(&b)).is_some()),
        "A: {:?}\nB: {:?}\n{}\n{}",
        job_of(&a, id),
        job_of(&b, id),
        host_a.log_text(),
        host_b.log_text()
    );
    let job = done(&a).or(done(&b)).expect("succeeded");
    let result: Value = serde_json::from_str(job.result.as_deref().unwrap_or("null")).unwrap();
    assert_eq!(
        result["slices"], slices,
        "every slice ran as channel test.wire"
    );
    let calls = |e: &Env| {
        e.state("test-wire", "calls")
            .map_or(0, |c| c.parse::<u64>().unwrap_or(0))
    };
    // One counter in the store both hosts share.
    assert_eq!(calls(&a), u64::from(slices), "each slice once");
    let ran = |h: &crate::util::Daemon| {
        h.log_lines(&["outcome=\"continued\""]).len()
            + h.log_lines(&["outcome=\"succeeded\""]).len()
    };
    assert!(
        ran(&host_a) > 0 && ran(&host_b) > 0,
        "slices ran on both hosts: {} / {}",
        ran(&host_a),
        ran(&host_b)
    );
    assert!(nats.count("SLUICE", "sluice-cont.test-wire.test.wire") >= 1);
    for h in [&host_a, &host_b] {
        assert!(
            h.log_lines(&["outcome=\"dead\""]).is_empty(),
            "{}",
            h.log_text()
        );
    }
}

/// Writes an outbox row as a committed job would, straight into the file.
fn insert_row(env: &Env, id: &str, channel: &str, headers: &str, body: &[u8]) {
    let conn = rusqlite::Connection::open(env.data.join("sluice.db")).expect("open");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    conn.execute(
        "INSERT INTO outbox (id, message_id, consumer, channel, kind, headers, body, cursor,
             visible_at, expires_at, created_at)
         VALUES (?1, ?1, NULL, ?2, 'command', ?3, ?4, NULL, 0, NULL, 0)",
        rusqlite::params![id, channel, headers, body],
    )
    .expect("insert outbox row");
}

#[test]
fn a_row_that_can_never_be_published_is_set_aside_and_the_rows_behind_it_go_on() {
    let nats = NatsServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n"));
    let env = Env::new(&["test-wire"], &cfg);
    let host = started(&env);
    // Rows written before the checks existed (or by a buggy producer): a
    // header NATS cannot carry, a body over max_payload, a bad subject.
    insert_row(
        &env,
        "bad-header",
        "test.sink",
        r#"[["bad name","x"]]"#,
        b"{}",
    );
    insert_row(&env, "too-big", "test.sink", "[]", &vec![b' '; 2 << 20]);
    insert_row(&env, "bad-subject", "a..b", "[]", b"{}");
    for i in 0..20 {
        insert_row(&env, &format!("good-{i}"), "test.sink", "[]", b"{}");
    }
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .count("SLUICE", "sluice.test.sink")
            == 20),
        "{}",
        host.log_text()
    );
    let poisoned = env.ok(&["outbox", "list", "--poisoned", "--json"]);
    let rows: Vec<Value> = poisoned
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mut ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["bad-header", "bad-subject", "too-big"]);
    assert!(
        rows.iter()
            .all(|r| r["error"].as_str().is_some_and(|e| !e.is_empty()))
    );
    let api = Api::new(&addr, None);
    let listed = api.get("/v1/outbox?state=poisoned").json();
    assert_eq!(listed["rows"].as_array().map(Vec::len), Some(3));
    let text = api.get("/metrics").text;
    assert_eq!(metric(&text, "sluice_outbox_poisoned"), Some(3.0));
    assert_eq!(metric(&text, "sluice_outbox_pending"), Some(0.0));
    // After a restart the relay neither trips on them nor sends them.
    host.kill();
    let host = started(&env);
    insert_row(&env, "good-after", "test.sink", "[]", b"{}");
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .count("SLUICE", "sluice.test.sink")
            == 21),
        "{}",
        host.log_text()
    );
    // An operator can queue one again; it is set aside again, alone.
    assert_eq!(api.post("/v1/outbox/bad-subject/repost", "").status, 200);
    assert!(wait_until(Duration::from_secs(30), || {
        env.ok(&["outbox", "list", "--poisoned", "--json"])
            .lines()
            .count()
            == 3
    }));
}

#[test]
fn posts_over_the_servers_max_payload_are_refused_when_posted() {
    let nats = NatsServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = nats.config(
        "10s",
        &format!("{ONE_ATTEMPT}[http]\naddr = \"{addr}\"\nbody_limit = \"4MiB\"\n"),
    );
    let env = Env::new(&["test-wire"], &cfg);
    let host = started(&env);
    // 1 MiB is NATS's default max_payload; the headers count too.
    let big = format!("\"{}\"", "x".repeat((1 << 20) - 40));
    let out = env.sluice_stdin(&["post", "test.wire", "--header", "trace=abc"], &big);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_payload"), "{stderr}");
    let api = Api::new(&addr, None);
    let r = api.post("/v1/channels/test.wire/messages", &big);
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("max_payload"), "{}", r.text);
    // A handler's post that could never be delivered fails its call before
    // anything commits, with the reason.
    let body = serde_json::json!({"posts": [{"channel": "test.sink", "pad": (1 << 20) - 200}]});
    let id = env.ok(&["post", "test.wire", &body.to_string()]);
    let job = wait_final(&env, id.trim(), &host);
    assert_eq!(job.state, JobState::Dead);
    let error = job.last_error.unwrap_or_default();
    assert!(error.contains("max_payload"), "{error}");
    assert_eq!(nats.count("SLUICE", "sluice.test.sink"), 0);
    let pending = env.ok(&["outbox", "list", "--json"]);
    assert!(pending.trim().is_empty(), "nothing committed: {pending}");
}

/// Item 8 of issue 10: a call whose posts cannot be mapped because of the
/// host (the post's channel lost its mapper in a reload) is handed back
/// without costing an attempt, however often, and runs once the mapper is
/// back.
#[test]
fn a_host_fault_while_mapping_posts_costs_no_attempt() {
    let nats = NatsServer::start();
    let env = Env::new(
        &["test-wire", "test-lanes-mapper"],
        &nats.config("10s", ONE_ATTEMPT),
    );
    let host = started(&env);
    std::fs::remove_file(env.plugins.join("test-lanes-mapper.wasm")).expect("rm");
    host.wait_log(
        &["plugin file removed", "test-lanes-mapper"],
        1,
        Duration::from_secs(30),
    );
    let id = env.ok(&[
        "post",
        "test.wire",
        r#"{"posts": [{"channel": "lanes.out"}]}"#,
    ]);
    let id = id.trim();
    // Handed back again and again, never dead (one attempt allowed).
    host.wait_log(&["outcome=\"host fault\""], 3, Duration::from_secs(60));
    let job = job_of(&env, id).expect("job");
    assert!(!crate::util::is_final(job.state), "{job:?}");
    env.deploy("test-lanes-mapper", "test-lanes-mapper.wasm");
    let job = wait_final(&env, id, &host);
    assert_eq!(job.state, JobState::Succeeded, "{}", host.log_text());
    assert_eq!(job.attempts, 1, "the hand-backs cost nothing");
    assert_eq!(nats.count("SLUICE", "sluice.lanes.out"), 1);
}
