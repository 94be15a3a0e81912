//! Jobs succeed with their effects committed exactly once.

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::util::{Env, FAST};

#[test]
fn n_posted_messages_become_n_succeeded_jobs_with_their_effects() {
    let env = Env::new(&["test-counter"], FAST);
    let n: i64 = 60;
    let input: String = (1..=n).map(|i| format!("{{\"amount\": {i}}}\n")).collect();
    let out = env.sluice_stdin(&["post", "test.counter"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        n as usize
    );

    let daemon = env.start();
    let jobs = env.wait_settled("test.counter", n as usize, Duration::from_secs(60));
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{:?}\n{}",
        jobs.iter()
            .map(|j| (j.state, j.last_error.clone()))
            .collect::<Vec<_>>(),
        daemon.log_text()
    );
    // The state counter saw every amount exactly once, despite concurrency.
    assert_eq!(
        env.state("test-counter", "total"),
        Some((n * (n + 1) / 2).to_string())
    );
    // Each job posted exactly one message, queued on test.counted.
    let counted = env.jobs("test.counted");
    assert_eq!(counted.len(), n as usize);
    let mut amounts: Vec<i64> = counted
        .iter()
        .map(|j| {
            let v: Value = serde_json::from_str(&j.body).expect("json body");
            v["amount"].as_i64().expect("amount")
        })
        .collect();
    amounts.sort();
    assert_eq!(amounts, (1..=n).collect::<Vec<_>>());
    // Every job records the plugin version that ran it and the fuel it used.
    assert!(
        jobs.iter()
            .all(|j| j.plugin_version.is_some() && j.fuel_used > 0)
    );
    assert!(
        jobs.iter()
            .all(|j| j.result.as_deref().is_some_and(|r| r.contains("total")))
    );
    let status = daemon.stop(Duration::from_secs(20));
    assert!(status.success());
}

#[test]
fn reposting_a_message_id_is_idempotent() {
    let env = Env::new(&["test-counter"], FAST);
    let first = env.ok(&[
        "post",
        "test.counter",
        r#"{"amount": 1}"#,
        "--id",
        "order-42",
    ]);
    let out = env.sluice(&[
        "post",
        "test.counter",
        r#"{"amount": 1}"#,
        "--id",
        "order-42",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), first);
    assert!(String::from_utf8_lossy(&out.stderr).contains("posted before"));
    assert_eq!(env.jobs("test.counter").len(), 1);
}

#[test]
fn delayed_messages_wait_and_expired_ones_are_not_run() {
    let env = Env::new(&["test-counter"], FAST);
    // Not the job's created_at: that is when the row was written, after
    // `sluice post` computed the delay and created the database.
    let posted_at = sluice::message::now_ms();
    let delayed = env.ok(&[
        "post",
        "test.counter",
        r#"{"amount": 1}"#,
        "--delay",
        "1500ms",
    ]);
    let expired = env.ok(&[
        "post",
        "test.counter",
        r#"{"amount": 100}"#,
        "--expires-in",
        "1ms",
    ]);
    assert_eq!(env.job(delayed.trim()).state, JobState::Scheduled);
    std::thread::sleep(Duration::from_millis(20));
    let daemon = env.start();
    env.wait_settled("test.counter", 2, Duration::from_secs(30));
    let d = env.job(delayed.trim());
    assert_eq!(d.state, JobState::Succeeded);
    assert!(
        d.started_at.unwrap_or(0) >= posted_at + 1500,
        "ran before its delay"
    );
    assert_eq!(env.job(expired.trim()).state, JobState::Expired);
    assert_eq!(
        env.state("test-counter", "total"),
        Some("1".into()),
        "expired job had no effect"
    );
    drop(daemon);
}

#[test]
fn an_event_on_a_channel_with_two_handlers_is_handled_by_each() {
    let env = Env::new(&["test-counter", "test-flaky"], FAST);
    let out = env.ok(&["post", "test.fanout", r#"{"amount": 3}"#, "--kind", "event"]);
    assert_eq!(
        out.lines().count(),
        1,
        "one unrouted job before any handler is known"
    );
    let daemon = env.start();
    let jobs = env.wait_settled("test.fanout", 2, Duration::from_secs(30));
    let mut handlers: Vec<&str> = jobs.iter().map(|j| j.consumer.as_str()).collect();
    handlers.sort();
    assert_eq!(handlers, ["test-counter", "test-flaky"]);
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{}",
        daemon.log_text()
    );
    assert_eq!(env.state("test-counter", "total"), Some("3".into()));
    // Now that both are registered, a new event gets two jobs at once.
    let out = env.ok(&["post", "test.fanout", r#"{"amount": 4}"#, "--kind", "event"]);
    assert_eq!(out.lines().count(), 2, "one job per handler");
    env.wait_settled("test.fanout", 4, Duration::from_secs(30));
    assert_eq!(env.state("test-counter", "total"), Some("7".into()));
}
