//! Misbehaving plugins fail their own messages, with a clear reason, and
//! never the host; retries, dead letters, replay and the circuit breaker.

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::util::{Env, FAST, wait_until};

fn abuse_config(extra: &str) -> String {
    format!(
        r#"{FAST}
[plugin.test-loop]
max_attempts = 2
fuel = 500_000_000
[plugin.test-memory]
max_attempts = 2
memory = "16MiB"
[plugin.test-panic]
max_attempts = 2
[plugin.test-recursion]
max_attempts = 2
{extra}"#
    )
}

#[test]
fn each_abuse_plugin_is_dead_lettered_with_its_reason_while_others_are_served() {
    let env = Env::new(
        &[
            "test-loop",
            "test-memory",
            "test-panic",
            "test-recursion",
            "test-counter",
        ],
        &abuse_config(""),
    );
    let cases = [
        ("test.loop", "out of fuel"),
        ("test.memory", "memory limit exceeded"),
        ("test.panic", "panic: boom: test-panic panicked on purpose"),
        ("test.recursion", "stack overflow"),
    ];
    let ids: Vec<String> = cases.iter().map(|(ch, _)| env.post(ch, "{}")).collect();
    let counters: Vec<String> = (0..20)
        .map(|_| env.post("test.counter", r#"{"amount": 1}"#))
        .collect();
    let mut daemon = env.start();
    for ((channel, reason), id) in cases.iter().zip(&ids) {
        env.wait_settled(channel, 1, Duration::from_secs(60));
        let job = env.job(id);
        let err = job.last_error.clone().unwrap_or_default();
        assert_eq!(
            job.state,
            JobState::Dead,
            "{channel}: {err}\n{}",
            daemon.log_text()
        );
        assert!(
            err.contains(reason),
            "{channel}: expected {reason:?} in {err:?}"
        );
        assert!(
            err.contains("gave up after 2 of 2 attempts"),
            "{channel}: {err}"
        );
        assert_eq!(job.attempts, 2, "{channel}: retried once before giving up");
        assert!(
            job.plugin_version.is_some(),
            "{channel}: dead letter records the plugin version"
        );
    }
    env.wait_settled("test.counter", 20, Duration::from_secs(60));
    for id in &counters {
        assert_eq!(env.job(id).state, JobState::Succeeded);
    }
    assert_eq!(env.state("test-counter", "total"), Some("20".into()));
    assert!(
        daemon.exited().is_none(),
        "the host survived every abuse plugin"
    );
    assert!(daemon.stop(Duration::from_secs(30)).success());
}

#[test]
fn a_guest_past_its_wall_clock_deadline_is_stopped() {
    let env = Env::new(
        &["test-loop"],
        &format!(
            "{FAST}\n[plugin.test-loop]\nmax_attempts = 1\nfuel = 1_000_000_000_000\ntimeout = \"300ms\"\n"
        ),
    );
    let id = env.post("test.loop", "{}");
    let daemon = env.start();
    env.wait_settled("test.loop", 1, Duration::from_secs(30));
    let job = env.job(&id);
    let err = job.last_error.unwrap_or_default();
    assert_eq!(job.state, JobState::Dead, "{}", daemon.log_text());
    assert!(
        err.contains("deadline exceeded (wall-clock limit 300 ms)"),
        "{err}"
    );
}

#[test]
fn the_sandbox_gives_no_files_environment_or_network() {
    // A listener the guest would reach if it had network access.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let env = Env::new(&["test-sandbox"], FAST);
    let id = env.post("test.sandbox", &format!(r#"{{"port": {port}}}"#));
    let daemon = env.start();
    env.wait_settled("test.sandbox", 1, Duration::from_secs(30));
    let job = env.job(&id);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{:?}\n{}",
        job.last_error,
        daemon.log_text()
    );
    let r: Value = serde_json::from_str(job.result.as_deref().unwrap_or("null")).expect("json");
    assert!(
        r["file"].as_str().is_some_and(|s| !s.starts_with("ok")),
        "file read must fail: {r}"
    );
    assert!(
        r["dir"].as_str().is_some_and(|s| !s.starts_with("ok")),
        "dir listing must fail: {r}"
    );
    assert_eq!(r["env"], serde_json::json!([]), "no environment: {r}");
    assert!(
        r["net"].as_str().is_some_and(|s| !s.starts_with("ok")),
        "connect must fail: {r}"
    );
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        listener.accept().is_err(),
        "nothing connected to the listener"
    );
}

#[test]
fn a_retryable_error_succeeds_on_a_later_attempt() {
    let env = Env::new(&["test-flaky"], FAST);
    let id = env.post("test.flaky", r#"{"fail_times": 2}"#);
    let daemon = env.start();
    env.wait_settled("test.flaky", 1, Duration::from_secs(30));
    let job = env.job(&id);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{:?}\n{}",
        job.last_error,
        daemon.log_text()
    );
    assert_eq!(job.attempts, 3);
    assert!(job.result.unwrap_or_default().contains("3"));
}

#[test]
fn a_permanent_error_is_dead_lettered_at_once_and_can_be_replayed() {
    let env = Env::new(&["test-flaky"], FAST);
    let id = env.post("test.flaky", r#"{"permanent": true}"#);
    let daemon = env.start();
    env.wait_settled("test.flaky", 1, Duration::from_secs(30));
    let job = env.job(&id);
    assert_eq!(job.state, JobState::Dead, "{}", daemon.log_text());
    assert_eq!(job.attempts, 1);
    assert!(
        job.last_error
            .unwrap_or_default()
            .contains("permanent error: asked to fail permanently")
    );

    assert_eq!(
        env.ok(&["dlq", "replay", &id]).trim(),
        format!("replayed {id}")
    );
    assert!(wait_until(Duration::from_secs(30), || env.job(&id).replays
        == 1
        && env.job(&id).state == JobState::Dead));
    let missing = env.sluice(&["dlq", "replay", "no-such-job"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no dead letter with id no-such-job")
    );
    assert_eq!(
        env.ok(&["dlq", "replay", "--all"]).trim(),
        "replayed 1 dead letter"
    );
}

#[test]
fn the_circuit_breaker_pauses_a_failing_handler() {
    let env = Env::new(
        &["test-flaky"],
        &format!(
            "{FAST}\n[plugin.test-flaky]\nconcurrency = 1\nmax_attempts = 100\nbreaker_failures = 3\nbreaker_cooldown = \"1h\"\n"
        ),
    );
    for _ in 0..5 {
        env.post("test.flaky", r#"{"fail_times": 1000}"#);
    }
    let daemon = env.start();
    let attempts = || {
        env.jobs("test.flaky")
            .iter()
            .map(|j| j.attempts)
            .sum::<u32>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || attempts() >= 3),
        "{}",
        daemon.log_text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(attempts(), 3, "no attempt while the breaker is open");
    assert!(daemon.log_text().contains("circuit breaker open"));
}
