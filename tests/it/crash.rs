//! Crash tests: the promise that a handler's effects happen exactly once,
//! proved by killing the host (SIGKILL) at random moments while it works.
//!
//! N messages each add their amount to a state counter and post one message.
//! The host is killed at least 10 times and restarted each time; at the end
//! every job succeeded once, the counter equals the expected sum exactly, and
//! every post reached the queue (embedded) or the stream (JetStream) exactly
//! once, counted downstream. `SLUICE_SOAK=1 cargo test crash` runs a longer
//! soak (more messages, 50 kills).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::util::{Daemon, Env, FAST, wait_until};

fn soak() -> bool {
    std::env::var_os("SLUICE_SOAK").is_some()
}

fn succeeded(env: &Env) -> usize {
    env.jobs("test.counter")
        .iter()
        .filter(|j| j.state == JobState::Succeeded)
        .count()
}

/// Starts and SIGKILLs the host `kills` times, each time after it made some
/// progress plus a random extra moment; then runs it to the end.
pub(crate) fn kill_repeatedly(env: &Env, n: usize, kills: usize) -> Daemon {
    for round in 0..kills {
        let host = env.start();
        let before = succeeded(env);
        if before >= n {
            return host;
        }
        // Kill it while it works: after it has done something this round,
        // at a random moment within the next ~150 ms.
        wait_until(Duration::from_secs(60), || succeeded(env) > before);
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..150)));
        host.kill();
        eprintln!(
            "crash test: kill #{} after {} of {n} jobs",
            round + 1,
            succeeded(env)
        );
    }
    env.start()
}

fn post_amounts(env: &Env, n: usize) -> i64 {
    let input: String = (1..=n).map(|i| format!("{{\"amount\": {i}}}\n")).collect();
    let out = env.sluice_stdin(&["post", "test.counter"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (n * (n + 1) / 2) as i64
}

pub(crate) fn assert_every_job_succeeded_once(env: &Env, n: usize, sum: i64, host: &Daemon) {
    assert!(
        wait_until(Duration::from_secs(180), || succeeded(env) == n),
        "{} of {n} succeeded\n{}",
        succeeded(env),
        host.log_text()
    );
    let jobs = env.jobs("test.counter");
    assert_eq!(jobs.len(), n, "one job per message, no duplicates");
    assert_eq!(
        env.state("test-counter", "total"),
        Some(sum.to_string()),
        "counter exact"
    );
}

#[test]
fn embedded_effects_are_exactly_once_across_repeated_kill_9() {
    let (n, kills) = if soak() { (5000, 50) } else { (800, 10) };
    let env = Env::new(
        &["test-counter"],
        &format!("{FAST}\n[plugin.test-counter]\nconcurrency = 4\n"),
    );
    let sum = post_amounts(&env, n);
    let host = kill_repeatedly(&env, n, kills);
    assert_every_job_succeeded_once(&env, n, sum, &host);
    // Downstream: every post is in the queue exactly once.
    let counted = env.jobs("test.counted");
    let causes: BTreeSet<String> = counted
        .iter()
        .map(|j| {
            let v: Value = serde_json::from_str(&j.body).expect("json");
            v["message_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(counted.len(), n, "each post queued once");
    assert_eq!(causes.len(), n, "one post per handled message");
}

#[test]
fn jetstream_effects_are_exactly_once_across_repeated_kill_9() {
    let (n, kills) = if soak() { (3000, 50) } else { (500, 10) };
    let nats = NatsServer::start();
    let env = Env::new(
        &["test-counter"],
        &format!(
            "{FAST}\n[plugin.test-counter]\nconcurrency = 4\n[nats]\nurl = \"{}\"\nack_wait = \"2s\"\n",
            nats.url()
        ),
    );
    let sum = post_amounts(&env, n);
    let host = kill_repeatedly(&env, n, kills);
    assert_every_job_succeeded_once(&env, n, sum, &host);
    // Downstream: the stream holds each post exactly once (the duplicate
    // window dropped re-sends of rows published before a kill).
    let in_stream = || {
        env.block_on(async {
            let client = async_nats::connect(nats.url()).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream("SLUICE").await.expect("stream");
            let info = stream
                .info_with_subjects("sluice.test.counted")
                .await
                .expect("info");
            use futures_util::TryStreamExt;
            let subjects: Vec<(String, usize)> = info.try_collect().await.expect("subjects");
            subjects.into_iter().map(|(_, c)| c).sum::<usize>()
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || in_stream() >= n),
        "{} of {n} posts reached the stream\n{}",
        in_stream(),
        host.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(in_stream(), n, "each post reached JetStream exactly once");
}

/// A long batch job killed between (and during) slices resumes from the last
/// committed cursor: the audited count is exact, so no slice was applied
/// twice or skipped.
fn batch_survives_kills(env: &Env, kills: usize) {
    let items = 60_000;
    let id = env.ok(&[
        "post",
        "audit.batch",
        &format!(r#"{{"items": {items}, "slice": 100}}"#),
    ]);
    let id = id.trim();
    let audited = || {
        env.state("batch-audit", "audited")
            .map_or(0, |a| a.parse::<u64>().unwrap_or(0))
    };
    for round in 0..kills {
        let host = env.start();
        let before = audited();
        if before >= items {
            break;
        }
        wait_until(Duration::from_secs(60), || audited() > before);
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..100)));
        host.kill();
        eprintln!(
            "batch crash test: kill #{} at {} of {items} items",
            round + 1,
            audited()
        );
    }
    let host = env.start();
    assert!(
        wait_until(Duration::from_secs(180), || {
            env.jobs("audit.batch")
                .iter()
                .any(|j| j.state == JobState::Succeeded)
        }),
        "{}",
        host.log_text()
    );
    assert_eq!(audited(), items, "each slice applied exactly once");
    let jobs = env.jobs("audit.batch");
    assert_eq!(jobs.len(), 1);
    assert!(
        jobs[0].message_id == id || jobs[0].id == id,
        "the same job ran every slice"
    );
    let result: Value =
        serde_json::from_str(jobs[0].result.as_deref().unwrap_or("null")).expect("json");
    assert_eq!(result["audited"], items);
}

#[test]
fn embedded_batch_resumes_from_its_cursor_across_kill_9() {
    let env = Env::new(&["batch-audit"], FAST);
    batch_survives_kills(&env, if soak() { 30 } else { 5 });
}

#[test]
fn jetstream_batch_resumes_from_its_cursor_across_kill_9() {
    let nats = NatsServer::start();
    let env = Env::new(
        &["batch-audit"],
        &format!(
            "{FAST}\n[nats]\nurl = \"{}\"\nack_wait = \"2s\"\n",
            nats.url()
        ),
    );
    batch_survives_kills(&env, if soak() { 30 } else { 5 });
}
