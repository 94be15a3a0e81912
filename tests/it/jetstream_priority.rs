//! Priorities on JetStream (issue 14, item 3): a consumer per level, the
//! pull that shares its room between them, and urgent messages through
//! retries, delays, two hosts and kill -9.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice::store::{JobRecord, JobState};

use crate::flow::{
    assert_old_jobs_not_starved, positions, post_with_priority, records, spin_one_at_a_time,
    succeeded_on,
};
use crate::nats::NatsServer;
use crate::util::{Env, FAST, wait_until};

/// test-spin one at a time, on `nats`.
fn one_at_a_time(nats: &NatsServer) -> String {
    format!(
        "{}\n[nats]\nurl = \"{}\"\nack_wait = \"10s\"\n",
        spin_one_at_a_time(),
        nats.url()
    )
}

/// The job of message `id` on `channel`, once it succeeded.
fn succeeded(env: &Env, channel: &str, id: &str) -> Option<JobRecord> {
    env.jobs(channel)
        .into_iter()
        .find(|j| j.message_id == id && j.state == JobState::Succeeded)
}

fn all_succeeded(jobs: &[JobRecord]) -> bool {
    jobs.iter().all(|j| j.state == JobState::Succeeded)
}

#[test]
fn jetstream_urgent_jobs_run_first_and_the_oldest_still_get_a_share() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-spin"], &one_at_a_time(&nats));
    assert_eq!(post_with_priority(&env, 50, "0").len(), 50);
    let high = post_with_priority(&env, 10, "9");
    // Level 9 has its own subject; level 0 the channel's.
    assert_eq!(nats.count("SLUICE", "sluice-p.9.test.spin"), 10);
    assert_eq!(nats.count("SLUICE", "sluice.test.spin"), 50);
    let host = env.start();
    let jobs = env.wait_settled("test.spin", 60, Duration::from_secs(60));
    assert!(all_succeeded(&jobs), "{}", host.log_text());
    // The same bound as on the embedded queue (tests/it/flow.rs): three
    // pulls in four go to priority.
    let urgent = positions(&jobs, &high);
    assert!(urgent.iter().all(|p| *p < 26), "{urgent:?}");
    drop(host);

    let nats = NatsServer::start();
    assert_old_jobs_not_starved(&Env::new(&["test-spin"], &one_at_a_time(&nats)));
}

#[test]
fn jetstream_a_level_between_is_not_starved_by_a_higher_one_and_level_0() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-spin"], &one_at_a_time(&nats));
    let low = post_with_priority(&env, 20, "0");
    let middle = post_with_priority(&env, 5, "3");
    let high = post_with_priority(&env, 60, "9");
    let host = env.start();
    let jobs = env.wait_settled("test.spin", 85, Duration::from_secs(60));
    assert!(all_succeeded(&jobs), "{}", host.log_text());
    let last_high = positions(&jobs, &high).into_iter().max().unwrap_or(0);
    let middle = positions(&jobs, &middle);
    // Level 3 takes turns with level 0 on the quarter the urgent share
    // leaves, so its five are done well before the sixty at 9.
    assert!(middle.iter().all(|p| *p < last_high), "{middle:?}");
    let first_low = positions(&jobs, &low).into_iter().min().unwrap_or(0);
    assert!(first_low < last_high, "level 0 starved");
}

#[test]
fn jetstream_two_hosts_run_urgent_jobs_first_and_each_once() {
    let nats = NatsServer::start();
    let cfg = one_at_a_time(&nats);
    let (a, b) = (
        Env::new(&["test-spin"], &cfg),
        Env::new(&["test-spin"], &cfg),
    );
    assert_eq!(post_with_priority(&a, 50, "0").len(), 50);
    let high = post_with_priority(&b, 10, "9");
    let (host_a, host_b) = (a.start(), b.start());
    let done = || succeeded_on(&[&a, &b]);
    assert!(
        wait_until(Duration::from_secs(120), || done() == 60),
        "{} of 60\n{}\n{}",
        done(),
        host_a.log_text(),
        host_b.log_text()
    );
    // Each job started on one host only.
    let mut starts: BTreeMap<String, usize> = BTreeMap::new();
    for j in a.jobs("test.spin").iter().chain(&b.jobs("test.spin")) {
        if j.started_at.is_some() {
            *starts.entry(j.message_id.clone()).or_default() += 1;
        }
    }
    assert_eq!(starts.len(), 60);
    assert!(starts.values().all(|n| *n == 1), "{starts:?}");
    // Both hosts pull by priority: the ten urgent ones are among the
    // first starts of the two (each host's own start order is the one
    // the bound holds for; together, they interleave).
    let jobs = records(&[&a, &b]);
    let urgent = positions(&jobs, &high);
    assert!(urgent.iter().all(|p| *p < 40), "{urgent:?}");
}

#[test]
fn jetstream_a_retried_urgent_job_keeps_its_level() {
    let nats = NatsServer::start();
    let cfg = format!(
        "{FAST}\n[plugin.test-flaky]\nmax_attempts = 5\n[nats]\nurl = \"{}\"\nack_wait = \"10s\"\n",
        nats.url()
    );
    let env = Env::new(&["test-flaky"], &cfg);
    let host = env.start();
    let id = env.ok(&[
        "post",
        "test.flaky",
        r#"{"fail_times": 2}"#,
        "--priority",
        "6",
    ]);
    let id = id.trim();
    assert!(
        wait_until(Duration::from_secs(60), || succeeded(
            &env,
            "test.flaky",
            id
        )
        .is_some()),
        "{}",
        host.log_text()
    );
    let job = succeeded(&env, "test.flaky", id).expect("job");
    assert_eq!(job.attempts, 3);
    // The retries went to level 6's continuation subject, none to the
    // plain ones.
    assert_eq!(nats.count("SLUICE", "sluice-p.6.test.flaky"), 1);
    assert_eq!(nats.count("SLUICE", "sluice-pc.6.*.test.flaky"), 2);
    assert_eq!(nats.count("SLUICE", "sluice-cont.*.test.flaky"), 0);
    assert_eq!(nats.count("SLUICE", "sluice.test.flaky"), 0);
}

#[test]
fn jetstream_a_delayed_urgent_job_runs_at_its_time_at_its_level() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-spin"], &nats.config("10s", ""));
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    let posted = sluice::message::now_ms();
    let id = env.ok(&[
        "post",
        "test.spin",
        r#"{"millis": 1}"#,
        "--priority",
        "8",
        "--delay",
        "1s",
    ]);
    let id = id.trim();
    assert!(
        wait_until(Duration::from_secs(60), || succeeded(&env, "test.spin", id)
            .is_some()),
        "{}",
        host.log_text()
    );
    let job = succeeded(&env, "test.spin", id).expect("job");
    assert!(
        job.started_at.is_some_and(|t| t >= posted + 1000),
        "started before its time: {:?} (posted {posted})",
        job.started_at
    );
    assert_eq!(nats.count("SLUICE", "sluice-p.8.test.spin"), 1);
    assert_eq!(nats.count("SLUICE", "sluice.test.spin"), 0);
}

#[test]
fn jetstream_urgent_effects_are_exactly_once_across_kill_9() {
    let n = 200;
    let nats = NatsServer::start();
    let env = Env::new(
        &["test-counter"],
        &format!(
            "{FAST}\n[plugin.test-counter]\nconcurrency = 4\n[nats]\nurl = \"{}\"\nack_wait = \"2s\"\n",
            nats.url()
        ),
    );
    // Half urgent, at two levels, half plain.
    let mut sum = 0;
    for (from, priority) in [(1, "0"), (51, "4"), (101, "9"), (151, "0")] {
        let input: String = (from..from + 50)
            .map(|i| format!("{{\"amount\": {i}}}\n"))
            .collect();
        sum += (from..from + 50).sum::<i64>();
        let out = env.sluice_stdin(&["post", "test.counter", "--priority", priority], &input);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(nats.count("SLUICE", "sluice-p.*.test.counter"), 100);
    let host = crate::crash::kill_repeatedly(&env, n, 5);
    crate::crash::assert_every_job_succeeded_once(&env, n, sum, &host);
}

#[test]
fn jetstream_a_plain_publish_to_a_level_subject_runs_and_the_old_subject_still_does() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-spin"], &nats.config("10s", ""));
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    // Any NATS client: level 5 by its subject (and its header, which the
    // host reads for the level of a retry), and a plain one on the old
    // subject without any Sluice header.
    nats.with_js(|js| async move {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", "raw-5");
        h.insert("sluice-priority", "5");
        js.publish_with_headers("sluice-p.5.test.spin", h, r#"{"millis": 1}"#.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", "raw-0");
        js.publish_with_headers("sluice.test.spin", h, r#"{"millis": 1}"#.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    });
    for id in ["raw-5", "raw-0"] {
        assert!(
            wait_until(Duration::from_secs(60), || succeeded(&env, "test.spin", id)
                .is_some()),
            "{id}\n{}",
            host.log_text()
        );
    }
}
