//! Stopping and restarting the daemon loses nothing.

use std::time::Duration;

use sluice::store::JobState;

use crate::util::{Env, FAST, wait_until};

#[test]
fn a_daemon_stopped_mid_queue_and_restarted_loses_nothing() {
    // A queue long enough that the stop lands in the middle of it.
    let env = Env::new(
        &["test-counter"],
        &format!("{FAST}\n[plugin.test-counter]\nconcurrency = 1\n"),
    );
    let n = 4000;
    let input: String = (0..n).map(|_| "{\"amount\": 1}\n").collect();
    assert!(
        env.sluice_stdin(&["post", "test.counter"], &input)
            .status
            .success()
    );
    let daemon = env.start();
    let done = || {
        env.jobs("test.counter")
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(60), || done() >= 20),
        "{}",
        daemon.log_text()
    );
    let status = daemon.stop(Duration::from_secs(30));
    assert!(status.success(), "graceful stop exits 0");
    let after_stop = done();
    assert!(
        after_stop < n,
        "stopped mid-queue ({after_stop} of {n} done)"
    );
    assert!(
        env.jobs("test.counter")
            .iter()
            .all(|j| j.state != JobState::Running),
        "nothing left running after a graceful stop"
    );
    let daemon = env.start();
    let jobs = env.wait_settled("test.counter", n, Duration::from_secs(120));
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{}",
        daemon.log_text()
    );
    assert_eq!(env.state("test-counter", "total"), Some(n.to_string()));
    assert_eq!(env.jobs("test.counted").len(), n);
}

#[test]
fn a_killed_daemon_is_recovered_on_restart_with_effects_exactly_once() {
    let env = Env::new(
        &["test-counter"],
        &format!("{FAST}\n[plugin.test-counter]\nconcurrency = 2\n"),
    );
    let n = 300;
    let input: String = (0..n).map(|_| "{\"amount\": 2}\n").collect();
    assert!(
        env.sluice_stdin(&["post", "test.counter"], &input)
            .status
            .success()
    );
    let succeeded = || {
        env.jobs("test.counter")
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count()
    };
    for _ in 0..3 {
        let daemon = env.start();
        let before = succeeded();
        wait_until(Duration::from_secs(30), || succeeded() >= before + 30);
        daemon.kill();
    }
    let daemon = env.start();
    let jobs = env.wait_settled("test.counter", n, Duration::from_secs(120));
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        env.state("test-counter", "total"),
        Some((2 * n).to_string())
    );
    assert_eq!(
        env.jobs("test.counted").len(),
        n,
        "each post recorded exactly once"
    );
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let env = Env::new(&["test-counter"], FAST);
    let mut first = env.start();
    assert!(wait_until(Duration::from_secs(30), || first
        .log_text()
        .contains("sluice running")));
    let second = env.sluice(&["run"]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("is in use by another sluice daemon"), "{err}");
    assert!(first.exited().is_none());
}

#[test]
fn messages_posted_before_any_handler_is_known_are_routed_when_it_starts() {
    let env = Env::new(&["test-counter"], FAST);
    let id = env.post("test.counter", r#"{"amount": 7}"#);
    assert_eq!(env.job(&id).consumer, "", "no handler registered yet");
    let daemon = env.start();
    env.wait_settled("test.counter", 1, Duration::from_secs(30));
    let job = env.job(&id);
    assert_eq!(job.state, JobState::Succeeded, "{}", daemon.log_text());
    assert_eq!(
        job.consumer, "test-counter",
        "the job id stayed valid after routing"
    );
}
