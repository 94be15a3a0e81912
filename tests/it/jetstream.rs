//! The JetStream transport against a real nats-server: competing hosts,
//! recipient lists, long-job heartbeats, kill -9 hand-off, graceful hand-back,
//! server restarts, dead letters.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::util::{Env, wait_until};

fn config(nats: &NatsServer, ack_wait: &str, extra: &str) -> String {
    nats.config(ack_wait, extra)
}

fn succeeded(env: &Env, channel: &str) -> BTreeSet<String> {
    env.jobs(channel)
        .into_iter()
        .filter(|j| j.state == JobState::Succeeded)
        .map(|j| j.message_id)
        .collect()
}

#[test]
fn two_hosts_on_one_command_channel_split_the_work_and_handle_each_message_once() {
    let nats = NatsServer::start();
    let cfg = config(&nats, "10s", "");
    let a = Env::new(&["test-counter"], &cfg);
    let b = Env::new(&["test-counter"], &cfg);
    let host_a = a.start();
    let host_b = b.start();
    for host in [&host_a, &host_b] {
        assert!(wait_until(Duration::from_secs(30), || host
            .log_text()
            .contains("sluice running")));
    }
    let n = 300;
    let input: String = (0..n).map(|_| "{\"amount\": 1}\n").collect();
    let out = a.sluice_stdin(&["post", "test.counter"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        n,
        "one message id per line"
    );
    let done = || succeeded(&a, "test.counter").len() + succeeded(&b, "test.counter").len();
    assert!(
        wait_until(Duration::from_secs(90), || done() >= n),
        "{} of {n} done\nA:\n{}\nB:\n{}",
        done(),
        host_a.log_text(),
        host_b.log_text()
    );
    let (sa, sb) = (succeeded(&a, "test.counter"), succeeded(&b, "test.counter"));
    assert_eq!(sa.len() + sb.len(), n, "every message handled");
    assert!(sa.is_disjoint(&sb), "no message handled by both hosts");
    assert!(
        !sa.is_empty() && !sb.is_empty(),
        "both hosts took work: {} / {}",
        sa.len(),
        sb.len()
    );
    let total = |e: &Env| {
        e.state("test-counter", "total")
            .map_or(0, |t| t.parse::<usize>().unwrap_or(0))
    };
    // One store for both hosts (shared state, the default): each sees
    // every message counted once.
    assert_eq!(total(&a), n);
    assert_eq!(total(&b), n);
    // Each handled message posted once, through each host's outbox.
    let sent = |e: &Env| {
        e.block_on(async {
            sluice::store::Store::open(&e.data.join("sluice.db"), &Default::default())
                .expect("store")
                .outbox_list(sluice::store::OutboxFilter::All, 100_000)
                .await
                .expect("outbox")
        })
    };
    assert!(wait_until(Duration::from_secs(30), || {
        let rows: Vec<_> = sent(&a).into_iter().chain(sent(&b)).collect();
        rows.len() == n && rows.iter().all(|r| r.sent_at.is_some())
    }));
}

#[test]
fn an_event_with_two_handlers_is_handled_by_each() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-counter", "test-flaky"], &config(&nats, "10s", ""));
    let host = env.start();
    assert!(wait_until(Duration::from_secs(30), || host
        .log_text()
        .contains("sluice running")));
    let out = env.ok(&["post", "test.fanout", r#"{"amount": 5}"#, "--kind", "event"]);
    let jobs = env.wait_settled("test.fanout", 2, Duration::from_secs(30));
    let handlers: BTreeSet<&str> = jobs.iter().map(|j| j.consumer.as_str()).collect();
    assert_eq!(handlers, BTreeSet::from(["test-counter", "test-flaky"]));
    assert!(
        jobs.iter()
            .all(|j| j.state == JobState::Succeeded && j.message_id == out.trim())
    );
}

#[test]
fn a_long_job_keeps_its_host_with_heartbeats_and_moves_when_the_host_is_killed() {
    let nats = NatsServer::start();
    // ack_wait 2s; the job runs 5s: only heartbeats keep it on its host.
    let cfg = config(&nats, "2s", "");
    let a = Env::new(&["test-spin"], &cfg);
    let b = Env::new(&["test-spin"], &cfg);
    let host_a = a.start();
    assert!(wait_until(Duration::from_secs(30), || host_a
        .log_text()
        .contains("sluice running")));
    let short = a.ok(&["post", "test.spin", r#"{"millis": 5000}"#]);
    assert!(wait_until(Duration::from_secs(30), || a
        .jobs("test.spin")
        .iter()
        .any(|j| j.state == JobState::Running)));
    let host_b = b.start();
    // Heartbeats: A keeps it past several ack waits; B never sees it.
    assert!(
        wait_until(Duration::from_secs(60), || succeeded(&a, "test.spin")
            .contains(short.trim())),
        "{}",
        host_a.log_text()
    );
    assert!(
        b.jobs("test.spin").is_empty(),
        "B never got the job A was working on"
    );

    // Now kill whichever host takes a long job, mid-job: the other one takes
    // it over after the ack wait.
    let long = a.ok(&["post", "test.spin", r#"{"millis": 4000}"#]);
    let long = long.trim();
    let running_on = |env: &Env| {
        env.jobs("test.spin")
            .iter()
            .any(|j| j.message_id == long && j.state == JobState::Running)
    };
    assert!(wait_until(Duration::from_secs(30), || running_on(&a) || running_on(&b)));
    let (survivor, survivor_host) = if running_on(&a) {
        host_a.kill();
        (&b, host_b)
    } else {
        host_b.kill();
        (&a, host_a)
    };
    assert!(
        wait_until(Duration::from_secs(60), || succeeded(survivor, "test.spin")
            .contains(long)),
        "{}",
        survivor_host.log_text()
    );
}

#[test]
fn a_graceful_stop_hands_in_flight_work_back_to_another_host() {
    let nats = NatsServer::start();
    // A long ack wait: only a hand-back (not expiry) can move the job in time.
    let cfg = config(&nats, "60s", "").replacen(
        "drain_timeout = \"10s\"",
        "drain_timeout = \"300ms\"",
        1,
    );
    let a = Env::new(&["test-spin"], &cfg);
    let b = Env::new(&["test-spin"], &cfg);
    let host_a = a.start();
    assert!(wait_until(Duration::from_secs(30), || host_a
        .log_text()
        .contains("sluice running")));
    let id = a.ok(&["post", "test.spin", r#"{"millis": 3000}"#]);
    assert!(wait_until(Duration::from_secs(30), || a
        .jobs("test.spin")
        .iter()
        .any(|j| j.state == JobState::Running)));
    let host_b = b.start();
    assert!(wait_until(Duration::from_secs(30), || host_b
        .log_text()
        .contains("sluice running")));
    let status = host_a.stop(Duration::from_secs(20));
    assert!(status.success(), "graceful stop exits 0");
    let job = a.jobs("test.spin").remove(0);
    assert_ne!(
        job.state,
        JobState::Running,
        "A released the job it could not finish"
    );
    assert!(
        wait_until(Duration::from_secs(30), || succeeded(&b, "test.spin")
            .contains(id.trim())),
        "B finished the handed-back job well before the 60s ack wait\n{}",
        host_b.log_text()
    );
}

#[test]
fn a_server_restart_under_load_loses_nothing() {
    let mut nats = NatsServer::start();
    let env = Env::new(
        &["test-counter"],
        &config(&nats, "5s", "[plugin.test-counter]\nconcurrency = 2"),
    );
    let n = 1500;
    let input: String = (0..n).map(|_| "{\"amount\": 1}\n").collect();
    assert!(
        env.sluice_stdin(&["post", "test.counter"], &input)
            .status
            .success()
    );
    let host = env.start();
    assert!(wait_until(Duration::from_secs(60), || succeeded(
        &env,
        "test.counter"
    )
    .len()
        >= 50));
    nats.restart();
    assert!(
        wait_until(Duration::from_secs(120), || succeeded(&env, "test.counter")
            .len()
            == n),
        "{} of {n}\n{}",
        succeeded(&env, "test.counter").len(),
        host.log_text()
    );
    assert_eq!(
        env.state("test-counter", "total"),
        Some(n.to_string()),
        "each effect once"
    );
    assert!(
        host.log_text().contains("disconnected from NATS"),
        "the outage was logged"
    );
}

#[test]
fn max_attempts_dead_letters_terminates_and_can_be_replayed() {
    let nats = NatsServer::start();
    let env = Env::new(
        &["test-flaky"],
        &config(&nats, "2s", "[plugin.test-flaky]\nmax_attempts = 2"),
    );
    let host = env.start();
    assert!(wait_until(Duration::from_secs(30), || host
        .log_text()
        .contains("sluice running")));
    env.ok(&["post", "test.flaky", r#"{"fail_times": 100}"#]);
    let jobs = env.wait_settled("test.flaky", 1, Duration::from_secs(30));
    let job = &jobs[0];
    assert_eq!(job.state, JobState::Dead, "{}", host.log_text());
    assert_eq!(job.attempts, 2);
    // Kept on the dead-letter stream (copied there when the delivery is
    // settled, just after the outcome commits), and terminated: no more
    // deliveries.
    let dlq = || nats.count("SLUICE_DLQ", "sluice-dlq.>");
    assert!(
        wait_until(Duration::from_secs(30), || dlq() >= 1),
        "{}",
        host.log_text()
    );
    assert_eq!(dlq(), 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        env.job(&job.id).attempts,
        2,
        "terminated: not redelivered after the ack wait"
    );
    // Replay re-publishes it to its handler, with fresh attempts.
    assert_eq!(
        env.ok(&["dlq", "replay", &job.id]).trim(),
        format!("replayed {}", job.id)
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let j = env.job(&job.id);
            j.replays == 1 && j.state == JobState::Dead && j.attempts == 2
        }),
        "{}",
        host.log_text()
    );
}

#[test]
fn a_pipelined_post_names_the_one_line_jetstream_refused_and_queues_every_other() {
    let nats = NatsServer::start();
    let a = Env::new(&["test-counter"], &config(&nats, "10s", ""));
    // Line 700 is larger than the server's max payload (1 MiB); the lines
    // around it are in flight with it.
    let n = 1500;
    let big = format!("{{\"amount\": 1, \"pad\": \"{}\"}}\n", "x".repeat(2 << 20));
    let input: String = (1..=n)
        .map(|i| {
            if i == 700 {
                big.clone()
            } else {
                "{\"amount\": 1}\n".to_owned()
            }
        })
        .collect();
    let out = a.sluice_stdin(&["post", "test.counter"], &input);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("stdin line 700 not queued")
            && err.contains(&format!("every other line up to line {n} was queued")),
        "{err}"
    );
    let printed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed.len(), n - 1, "one id per queued line");
    let host = a.start();
    assert!(
        wait_until(Duration::from_secs(60), || succeeded(&a, "test.counter")
            .len()
            >= n - 1),
        "{}",
        host.log_text()
    );
    assert_eq!(
        succeeded(&a, "test.counter"),
        printed,
        "exactly the printed ids"
    );
    assert_eq!(
        a.state("test-counter", "total"),
        Some((n - 1).to_string()),
        "each handled once"
    );
    host.stop(Duration::from_secs(10));
}

/// Item 4 of issue 10: the server hands a message out again while its
/// first run is still going (the host froze past the ack wait). The first
/// run's finish is stale and must settle nothing, so when the live run is
/// handed back the message still comes back and runs.
#[test]
fn a_stale_run_never_settles_the_live_delivery() {
    let nats = NatsServer::start();
    let cfg = format!(
        "poll_interval = \"20ms\"\ndrain_timeout = \"1s\"\n[plugin.test-wire]\nfuel = 10_000_000_000_000\ntimeout = \"120s\"\n[nats]\nurl = \"{}\"\nack_wait = \"1s\"\n",
        nats.url()
    );
    let (a, b) = (
        Env::new(&["test-wire"], &cfg),
        Env::new(&["test-wire"], &cfg),
    );
    let host = a.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    // The redelivery spins longer than the first run, so it is still
    // running when the first run ends (both spinning 5 s, they ended
    // within milliseconds of each other and the live run could succeed
    // before the stop that is to hand it back).
    let message = a.ok(&[
        "post",
        "test.wire",
        r#"{"spin_ms": 5000, "retry_spin_ms": 15000}"#,
    ]);
    let id = sluice::store::job_id_for(message.trim(), "test-wire");
    let attempts = |env: &Env| {
        env.jobs("test.wire")
            .into_iter()
            .find(|j| j.id == id)
            .filter(|j| j.state == JobState::Running)
            .map_or(0, |j| j.attempts)
    };
    assert!(wait_until(Duration::from_secs(60), || attempts(&a) == 1));
    // Frozen past the ack wait: the server delivers the message again.
    host.signal("STOP");
    std::thread::sleep(Duration::from_secs(3));
    host.signal("CONT");
    assert!(
        wait_until(Duration::from_secs(60), || attempts(&a) == 2),
        "{}",
        host.log_text()
    );
    // The first run ends stale: it settles nothing.
    host.wait_log(&["outcome=\"stale\""], 1, Duration::from_secs(60));
    // The live run is handed back by a graceful stop, and runs elsewhere.
    let log_a = host.log.clone();
    assert!(host.stop(Duration::from_secs(30)).success());
    assert!(
        !a.jobs("test.wire")
            .iter()
            .any(|j| j.id == id && j.state == JobState::Succeeded),
        "the live run ended before the stop: nothing was handed back"
    );
    let other = b.start();
    assert!(
        wait_until(Duration::from_secs(90), || {
            b.jobs("test.wire")
                .iter()
                .any(|j| j.id == id && j.state == JobState::Succeeded)
        }),
        "{}\n{}",
        std::fs::read_to_string(&log_a).unwrap_or_default(),
        other.log_text()
    );
}

/// An operator removes a handler's durable consumer (`nats consumer rm`)
/// while the host runs: the host creates it again and the channel runs on.
#[test]
fn a_consumer_removed_while_the_host_runs_is_created_again() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-counter"], &config(&nats, "10s", ""));
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(30));
    env.post("test.counter", r#"{"amount": 1}"#);
    assert!(
        wait_until(Duration::from_secs(60), || succeeded(&env, "test.counter")
            .len()
            == 1),
        "{}",
        host.log_text()
    );
    let removed = nats.with_js(|js| async move {
        use futures_util::StreamExt;
        let stream = js.get_stream("SLUICE").await.expect("stream");
        let mut names = stream.consumer_names();
        let mut removed = 0;
        while let Some(Ok(name)) = names.next().await {
            stream
                .delete_consumer(&name)
                .await
                .expect("delete consumer");
            removed += 1;
        }
        removed
    });
    assert!(removed >= 1);
    env.post("test.counter", r#"{"amount": 1}"#);
    assert!(
        wait_until(Duration::from_secs(60), || succeeded(&env, "test.counter")
            .len()
            == 2),
        "the channel never ran again\n{}",
        host.log_text()
    );
    assert!(!host.log_lines(&["consumer", "created again"]).is_empty());
}

/// Hosts that disagree on `ack_wait` share one consumer, so a later host
/// changes it under the others: it says so loudly.
#[test]
fn a_host_with_another_ack_wait_than_its_consumer_warns() {
    let nats = NatsServer::start();
    let first = Env::new(&["test-counter"], &config(&nats, "20s", ""));
    let host = first.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(30));
    assert!(host.log_lines(&["ack_wait is not this host's"]).is_empty());
    let second = Env::new(&["test-counter"], &config(&nats, "5s", ""));
    let other = second.start();
    other.wait_log(&["sluice running"], 1, Duration::from_secs(30));
    let warned = other.log_lines(&["ack_wait is not this host's"]);
    assert!(
        warned
            .iter()
            .any(|l| l.contains("consumer_ack_wait=20s") && l.contains("ack_wait=5s")),
        "{}",
        other.log_text()
    );
}
