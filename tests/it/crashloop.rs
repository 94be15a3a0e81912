//! A job that takes down every host that runs it (kill -9 mid-call, each
//! time) must reach the dead letters after `max_attempts`, not loop for
//! ever: attempts that ended without an outcome count, on one host
//! (recovery at start) and across hosts (JetStream's delivery count).

use std::time::Duration;

use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::util::{Daemon, Env, FAST, wait_until};

/// Three attempts; a call that spins long enough to be killed in.
const POLICY: &str =
    "[plugin.test-wire]\nmax_attempts = 3\nfuel = 10_000_000_000_000\ntimeout = \"120s\"\n";

/// The body of a job that is still running when its host is killed.
const LONG: &str = r#"{"spin_ms": 100000}"#;

fn job(env: &Env) -> Option<sluice::store::JobRecord> {
    env.jobs("test.wire").into_iter().next()
}

/// Starts a host on `env`, waits until it runs the job, kills it.
fn run_and_kill(env: &Env, round: usize) {
    let started = sluice::message::now_ms();
    let host = env.start();
    // Running here, taken by this host (not a row left by the last kill).
    let running = wait_until(Duration::from_secs(60), || {
        job(env).is_some_and(|j| j.state == JobState::Running && j.updated_at >= started)
    });
    assert!(
        running,
        "round {round}: {:?}\n{}",
        job(env),
        host.log_text()
    );
    host.kill();
}

fn wait_dead(env: &Env, host: &Daemon) -> sluice::store::JobRecord {
    let dead = wait_until(Duration::from_secs(60), || {
        job(env).is_some_and(|j| j.state == JobState::Dead)
    });
    assert!(dead, "{:?}\n{}", job(env), host.log_text());
    let job = job(env).expect("job");
    let error = job.last_error.clone().unwrap_or_default();
    assert!(error.contains("without an outcome"), "{error}");
    // Dead-lettered once, without being run again. The outcome's log line
    // comes after its commit, so wait for it before counting.
    host.wait_log(
        &["outcome=\"dead\"", "without an outcome"],
        1,
        Duration::from_secs(30),
    );
    assert_eq!(
        host.log_lines(&["outcome=\"dead\"", "without an outcome"])
            .len(),
        1,
        "{}",
        host.log_text()
    );
    job
}

#[test]
fn embedded_a_job_that_kills_its_host_every_time_is_dead_lettered() {
    let env = Env::new(&["test-wire"], &format!("{FAST}\n{POLICY}"));
    env.post("test.wire", LONG);
    for round in 0..3 {
        run_and_kill(&env, round);
    }
    let host = env.start();
    let job = wait_dead(&env, &host);
    assert_eq!(job.attempts, 4, "three killed attempts, then the verdict");
    assert_eq!(env.state("test-wire", "calls"), None, "no call committed");
}

#[test]
fn jetstream_a_job_that_kills_every_host_is_dead_lettered_across_hosts() {
    let nats = NatsServer::start();
    let cfg = nats.config("2s", POLICY);
    let (a, b) = (
        Env::new(&["test-wire"], &cfg),
        Env::new(&["test-wire"], &cfg),
    );
    a.post("test.wire", LONG);
    // A, B, A: each host sees the job at most twice, so only the server's
    // delivery count can tell the third host its attempts are used up.
    run_and_kill(&a, 0);
    run_and_kill(&b, 1);
    run_and_kill(&a, 2);
    let host = b.start();
    let job = wait_dead(&b, &host);
    // Three killed attempts (more if a loaded machine delayed a heartbeat
    // past the ack wait), then the verdict.
    assert!(job.attempts > 3, "{job:?}");
    assert!(
        wait_until(Duration::from_secs(30), || nats.count("SLUICE_DLQ", ">")
            == 1),
        "one dead letter\n{}",
        host.log_text()
    );
    for env in [&a, &b] {
        assert_eq!(env.state("test-wire", "calls"), None, "no call committed");
    }
}
