//! Delays on JetStream never take a slot from due work (issue 10, item 1):
//! delayed `sluice post`s, a foreign producer's `Sluice-Not-Before`, a
//! handler's delayed posts and retry backoffs all wait on the server as
//! message schedules, not as NAKed deliveries holding `max_ack_pending`.

use std::time::Duration;

use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::util::{Env, wait_until};

/// Four slots, retries that back off for an hour, and no circuit breaker
/// (ten failures in a row would pause the handler).
const POLICY: &str = r#"[plugin.test-wire]
concurrency = 4
breaker_failures = 0
max_attempts = 10
backoff_initial = "1h"
backoff_max = "1h"
"#;

#[test]
fn delayed_messages_and_retry_backoffs_leave_every_slot_to_due_work() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-wire"], &nats.config("10s", POLICY));
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    let n = 10;
    let lines = |body: &str| -> String { (0..n).map(|_| format!("{body}\n")).collect() };

    // 10 delayed by the CLI, 10 by a foreign producer's not-before header,
    // 10 posted delayed by a handler, 10 failing into an hour's backoff:
    // each group alone is more than the handler's 4 slots.
    let out = env.sluice_stdin(&["post", "test.wire", "-", "--delay", "1h"], &lines("{}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delayed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(delayed.len(), n);
    let due_at = sluice::message::now_ms() + 3_600_000;
    nats.with_js(|js| async move {
        for i in 0..n {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Sluice-Id", format!("foreign-{i}").as_str());
            h.insert("Sluice-Not-Before", due_at.to_string().as_str());
            js.publish_with_headers("sluice.test.wire", h, "{}".into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    });
    let posts: Vec<_> = (0..n)
        .map(|_| serde_json::json!({"channel": "test.wire", "delay_ms": 3_600_000}))
        .collect();
    let poster = env.ok(&[
        "post",
        "test.wire",
        &serde_json::json!({ "posts": posts }).to_string(),
    ]);
    let out = env.sluice_stdin(&["post", "test.wire"], &lines(r#"{"fail_times": 5}"#));
    assert!(out.status.success());
    let failing: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();

    // Every one of them waits on the server as a schedule.
    assert!(
        wait_until(Duration::from_secs(60), || nats
            .count("SLUICE", "sluice-sched.>")
            == 4 * n),
        "{} schedules\n{}",
        nats.count("SLUICE", "sluice-sched.>"),
        host.log_text()
    );

    // Due work runs at once, all of it.
    let out = env.sluice_stdin(&["post", "test.wire"], &lines("{}"));
    assert!(out.status.success());
    let due: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let state = |id: &str| {
        env.jobs("test.wire")
            .into_iter()
            .find(|j| j.message_id == id)
            .map(|j| j.state)
    };
    assert!(
        wait_until(Duration::from_secs(60), || due
            .iter()
            .all(|id| state(id) == Some(JobState::Succeeded))),
        "due jobs: {:?}\n{}",
        due.iter().map(|id| state(id)).collect::<Vec<_>>(),
        host.log_text()
    );
    assert_eq!(state(poster.trim()), Some(JobState::Succeeded));
    // The delayed ones have not run, and the failing ones ran once each.
    // (Recorded by the host they were posted through, waiting.)
    for id in &delayed {
        assert_eq!(
            state(id),
            Some(JobState::Scheduled),
            "a message delayed by an hour ran"
        );
    }
    for id in &failing {
        let job = env
            .jobs("test.wire")
            .into_iter()
            .find(|j| &j.message_id == id)
            .expect("job");
        assert_eq!((job.state, job.attempts), (JobState::Retrying, 1));
    }

    // A short delay fires when due, not before.
    let posted_at = sluice::message::now_ms();
    let soon = env.ok(&["post", "test.wire", "{}", "--delay", "3s"]);
    assert!(
        wait_until(Duration::from_secs(60), || state(soon.trim())
            == Some(JobState::Succeeded)),
        "{}",
        host.log_text()
    );
    let job = env
        .jobs("test.wire")
        .into_iter()
        .find(|j| j.message_id == soon.trim())
        .expect("job");
    assert!(
        job.started_at.is_some_and(|t| t >= posted_at + 3000),
        "started {:?}, posted {posted_at}",
        job.started_at
    );

    // A delay the stream cannot keep (max_age is 7 days) is refused.
    let out = env.sluice(&["post", "test.wire", "{}", "--delay", "30d"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("longer than the stream keeps"), "{stderr}");
}

/// Delays under 2 s wait on the server too, never as a NAKed delivery
/// holding one of the handler's slots: a `sluice post` delayed 1.5 s, a
/// foreign producer's not-before 1.8 s ahead, a handler's post delayed
/// 1.5 s and a retry backing off 1 s each reach the stream as the
/// server's firing of a schedule (`Nats-Scheduler`), and none runs before
/// it is due.
#[test]
fn delays_under_two_seconds_wait_on_the_server_too() {
    let nats = NatsServer::start();
    let policy = "[plugin.test-wire]\nconcurrency = 1\nmax_attempts = 5\nbackoff_initial = \"1s\"\nbackoff_max = \"1s\"\n";
    let env = Env::new(&["test-wire"], &nats.config("10s", policy));
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    let posted_at = sluice::message::now_ms();
    let cli = env.ok(&["post", "test.wire", "{}", "--delay", "1500ms"]);
    let cli = cli.trim().to_owned();
    let foreign_due = sluice::message::now_ms() + 1800;
    nats.with_js(|js| async move {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Sluice-Id", "foreign-short");
        h.insert("Sluice-Not-Before", foreign_due.to_string().as_str());
        js.publish_with_headers("sluice.test.wire", h, "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
    let body = r#"{"posts": [{"channel": "test.sink", "delay_ms": 1500}]}"#;
    let poster = env.ok(&["post", "test.wire", body]).trim().to_owned();
    let failing = env
        .ok(&["post", "test.wire", r#"{"fail_times": 1}"#])
        .trim()
        .to_owned();
    let job = |id: &str| {
        env.jobs("test.wire")
            .into_iter()
            .find(|j| j.message_id == id)
    };
    let ids = [cli.as_str(), "foreign-short", &poster, &failing];
    assert!(
        wait_until(Duration::from_secs(60), || ids
            .iter()
            .all(|id| job(id).is_some_and(|j| j.state == JobState::Succeeded))),
        "{:?}\n{}",
        ids.iter()
            .map(|id| job(id).map(|j| j.state))
            .collect::<Vec<_>>(),
        host.log_text()
    );
    let started = |id: &str| job(id).and_then(|j| j.started_at).unwrap_or(0);
    assert!(started(&cli) >= posted_at + 1500, "ran before it was due");
    assert!(
        started("foreign-short") >= foreign_due,
        "ran before it was due"
    );

    // Each delayed one came from a schedule the server fired.
    let fired = |subject: &str, id: Option<&str>| {
        nats.messages("SLUICE").iter().any(|m| {
            m.subject.as_str() == subject
                && m.headers.get("Nats-Scheduler").is_some()
                && id.is_none_or(|id| m.headers.get("Sluice-Id").is_some_and(|v| v.as_str() == id))
        })
    };
    let cont = "sluice-cont.test-wire.test.wire";
    assert!(fired("sluice.test.wire", Some(&cli)), "the CLI's post");
    assert!(fired(cont, Some("foreign-short")), "the foreign message");
    assert!(fired("sluice.test.sink", None), "the handler's post");
    assert!(fired(cont, Some(&failing)), "the retry");
}

/// libfaketime's preload library (the daemon runs under it with its
/// `FAKETIME` offset; the CLI and the server keep real time).
fn libfaketime() -> &'static str {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("this test needs libfaketime (Debian package faketime; scripts/test installs it)")
}

/// A host whose clock is behind nats-server's gets every scheduled message
/// early by its own clock (review2 #1). Each such delivery used to be
/// scheduled again under one fixed id; the second early one was dropped by
/// the duplicate window as a copy of the first, acked, and lost for good.
/// Here the daemon runs 3 s behind (libfaketime; the CLI and the server
/// keep real time): a delayed CLI post, which the server fires, and a
/// foreign message with a not-before time, which arrives at once and is
/// scheduled by the host, both run, once.
#[test]
fn a_host_whose_clock_is_behind_the_servers_still_runs_scheduled_messages() {
    let lib = libfaketime();
    let nats = NatsServer::start();
    let env = Env::new(&["test-wire"], &nats.config("10s", POLICY));
    let host = env.start_with_env(&[
        ("LD_PRELOAD", lib),
        ("FAKETIME", "-3s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    let cli = env.ok(&["post", "test.wire", "{}", "--delay", "2s"]);
    let cli = cli.trim().to_owned();
    let foreign_due = sluice::message::now_ms() + 2000;
    nats.with_js(|js| async move {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Sluice-Id", "foreign-skewed");
        h.insert("Sluice-Not-Before", foreign_due.to_string().as_str());
        js.publish_with_headers("sluice.test.wire", h, "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
    let job = |id: &str| {
        env.jobs("test.wire")
            .into_iter()
            .find(|j| j.message_id == id)
    };
    let ids = [cli.as_str(), "foreign-skewed"];
    assert!(
        wait_until(Duration::from_secs(30), || ids
            .iter()
            .all(|id| job(id).is_some_and(|j| j.state == JobState::Succeeded))),
        "{:?}\n{}",
        ids.iter()
            .map(|id| job(id).map(|j| j.state))
            .collect::<Vec<_>>(),
        host.log_text()
    );
    for id in ids {
        assert_eq!(job(id).map(|j| j.attempts), Some(1), "{id} ran once");
    }
}

/// Leases on JetStream are judged by host clocks, so a host measures its
/// clock against the server's stamp of its presence entry: 30 s ahead it
/// warns (once) and `/metrics` shows the offset; 1 s behind (within the
/// 2 s bound) it says nothing, but still shows the offset.
#[test]
fn a_host_whose_clock_is_far_from_the_servers_says_so() {
    let lib = libfaketime();
    let nats = NatsServer::start();
    let skewed = |offset: &str| {
        let addr = format!("127.0.0.1:{}", crate::api::free_port());
        let env = Env::new(
            &["test-wire"],
            &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n")),
        );
        let host = env.start_with_env(&[
            ("LD_PRELOAD", lib),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]);
        let api = crate::api::Api::new(&addr, None);
        api.wait_up(&host);
        (env, host, api)
    };
    let gauge = |api: &crate::api::Api| {
        crate::api::metric(&api.get("/metrics").text, "sluice_clock_offset_seconds")
    };
    let (_ahead_env, ahead, ahead_api) = skewed("+30s");
    let (_behind_env, behind, behind_api) = skewed("-1s");
    ahead.wait_log(&["CLOCK OFF"], 1, Duration::from_secs(30));
    let line = ahead.log_lines(&["CLOCK OFF"]).join("\n");
    assert!(line.contains("NTP"), "{line}");
    let offset = gauge(&ahead_api);
    assert!(
        offset.is_some_and(|o| (-35.0..-25.0).contains(&o)),
        "{offset:?}"
    );
    let mut seen = None;
    assert!(wait_until(Duration::from_secs(30), || {
        seen = gauge(&behind_api);
        seen.is_some()
    }));
    assert!(
        seen.is_some_and(|o| (0.0..2.0).contains(&o)),
        "1 s behind: {seen:?}"
    );
    std::thread::sleep(sluice::cluster::BEAT * 2);
    // Measured twice more meanwhile (a beat is 5 s): still one warning.
    assert_eq!(
        ahead.log_lines(&["CLOCK OFF"]).len(),
        1,
        "{}",
        ahead.log_text()
    );
    assert!(
        behind.log_lines(&["CLOCK OFF"]).is_empty(),
        "{}",
        behind.log_text()
    );
}
