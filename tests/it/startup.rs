//! Starting on JetStream before JetStream can serve: the daemon waits for
//! it (one log line per attempt, alive but not ready meanwhile, its API
//! up) and runs jobs once it is there; only an error that cannot heal (the
//! server refuses the client, the URL names no NATS server) ends the start.

use std::time::Duration;

use sluice::store::{JobState, job_id_for};

use crate::api::{Api, free_port};
use crate::nats::NatsServer;
use crate::util::{Env, wait_until};

#[test]
fn a_daemon_started_before_its_nats_server_waits_for_it_and_then_runs_jobs() {
    let mut nats = NatsServer::start();
    nats.kill();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::new(
        &["test-wire"],
        &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n")),
    );
    let mut daemon = env.start();
    let api = Api::new(&addr, None);
    // It keeps trying, one line per attempt, and says so.
    assert!(
        wait_until(Duration::from_secs(60), || daemon
            .log_lines(&["cannot set up JetStream yet"])
            .len()
            >= 2),
        "no retries logged:\n{}",
        daemon.log_text()
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    // Alive, not ready; the rest of the API answers 503, not a refusal.
    assert_eq!(api.get("/healthz").status, 200);
    let ready = api.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(
        ready.json()["problems"][0]
            .as_str()
            .is_some_and(|p| p.starts_with("starting: connecting to NATS")),
        "{}",
        ready.text
    );
    let post = api.post("/v1/channels/test.wire/messages", "{}");
    assert_eq!(post.status, 503, "{}", post.text);
    assert_eq!(post.retry_after.as_deref(), Some("1"));

    // The server comes up 3 s later: the daemon sets up and serves.
    std::thread::sleep(Duration::from_secs(3));
    nats.start_again();
    assert!(
        wait_until(Duration::from_secs(60), || api.get("/readyz").status == 200),
        "never ready:\n{}",
        daemon.log_text()
    );
    assert!(!daemon.log_lines(&["JetStream set up"]).is_empty());
    let posted = api.post("/v1/channels/test.wire/messages", "{}");
    assert_eq!(posted.status, 202, "{}", posted.text);
    let message = env.ok(&["post", "test.wire", "{}"]);
    let id = job_id_for(message.trim(), "test-wire");
    assert!(
        wait_until(Duration::from_secs(60), || env
            .jobs("test.wire")
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count()
            == 2),
        "jobs: {:?}\n{}",
        env.jobs("test.wire")
            .iter()
            .map(|j| (&j.id, j.state))
            .collect::<Vec<_>>(),
        daemon.log_text()
    );
    assert!(env.jobs("test.wire").iter().any(|j| j.id == id));
    daemon.stop(Duration::from_secs(30));
}

#[test]
fn a_server_that_refuses_the_daemon_ends_its_start_with_one_clear_line() {
    let nats = NatsServer::start_with("authorization { token: \"s3cret\" }");
    let env = Env::new(&["test-wire"], &nats.config("10s", ""));
    let mut daemon = env.start();
    let status = wait_until(Duration::from_secs(60), || daemon.exited().is_some());
    assert!(status, "still running:\n{}", daemon.log_text());
    assert!(
        daemon.exited().is_some_and(|s| !s.success()),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(log.contains("refused the connection"), "{log}");
    assert!(!log.contains("trying again"), "{log}");
}

#[test]
fn a_url_that_names_no_nats_server_ends_the_start_with_one_clear_line() {
    let env = Env::new(&["test-wire"], "[nats]\nurl = \"http://127.0.0.1:4222\"\n");
    let mut daemon = env.start();
    assert!(
        wait_until(Duration::from_secs(60), || daemon.exited().is_some()),
        "still running:\n{}",
        daemon.log_text()
    );
    assert!(
        daemon.exited().is_some_and(|s| !s.success()),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(
        log.contains("is not a NATS server URL") && log.contains("http"),
        "{log}"
    );
    assert!(!log.contains("trying again"), "{log}");
}
