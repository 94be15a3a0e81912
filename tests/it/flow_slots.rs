//! Flow control's shared concurrency slots on JetStream
//! (`transport::jetstream::flow`): what a slot is held by, how it comes
//! back, and what a dead host or a restarted server does to the limit.

use std::time::Duration;

use sluice::message::now_ms;
use sluice::store::{JobRecord, JobState};
use sluice::transport::{Got, SharedFlow};

use crate::flow::{bodies, post_lines, succeeded_on, tenant_of, two_hosts};
use crate::nats::NatsServer;
use crate::util::{Env, log_field, wait_until};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn host(nats: &NatsServer) -> SharedFlow {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    SharedFlow::open(&client, 1).await.expect("flow bucket")
}

/// Review #9: a job's next slice (or its re-queued run) can be pulled on
/// the same host before the last delivery's slot is given back. Named by
/// the job, both deliveries were one holder: the second was let in at
/// once, and the late give-back of the first then took the second's slot
/// with it, so another host ran a second job of the key.
#[test]
fn a_late_give_back_of_one_delivery_never_frees_the_next_deliverys_slot() {
    let nats = NatsServer::start();
    runtime().block_on(async {
        let (a, b) = (host(&nats).await, host(&nats).await);
        let (handler, key) = ("test-wire", "tenant.a b\u{e9}");
        let first = a.holder("job-x");
        let second = a.holder("job-x");
        assert_ne!(first, second, "one holder per delivery");
        assert_eq!(a.acquire(handler, key, 1, &first).await, Ok(Got::Yes));
        assert_eq!(
            a.acquire(handler, key, 1, &second).await,
            Ok(Got::No),
            "the next slice waits for the last one's slot"
        );
        a.release(handler, key, &first).await;
        assert_eq!(a.acquire(handler, key, 1, &second).await, Ok(Got::Yes));
        // A give-back of the first that comes late (a retried release)
        // takes nothing of the second's.
        a.release(handler, key, &first).await;
        assert_eq!(a.holders(handler, key).await, Ok(vec![second.clone()]));
        assert_eq!(
            b.acquire(handler, key, 1, &b.holder("job-y")).await,
            Ok(Got::No),
            "another host finds the key at its limit"
        );
        // Taking is idempotent per holder (a retry after a lost answer).
        assert_eq!(a.acquire(handler, key, 1, &second).await, Ok(Got::Yes));
        a.release(handler, key, &second).await;
        assert_eq!(
            b.acquire(handler, key, 1, &b.holder("job-y")).await,
            Ok(Got::Yes)
        );
    });
}

/// The live holders of tenant `k`'s slots of test-spin.
fn holders(nats: &NatsServer) -> Vec<String> {
    runtime().block_on(async {
        host(nats)
            .await
            .holders("test-spin", "k")
            .await
            .expect("holders")
    })
}

/// Spans `[start, end)` of `tenant`'s jobs that succeeded, each from the
/// host that ran it last (the latest start: a host that ran it earlier, or
/// learned its outcome from the status board, keeps its own start), plus
/// `extra`. A record keeps the start of its job's first run: the killed
/// job (`killed`: its id and the start of the run that was killed) run
/// again by the same host would span both runs and the lease wait between
/// them, so its last run is taken from that host's log line for the
/// success (`duration_ms` before `finished_at`).
fn spans(
    envs: &[&Env],
    tenant: &str,
    extra: &[(i64, i64)],
    killed: (&str, i64),
    logs: &[String],
) -> Vec<(i64, i64)> {
    let mut last: std::collections::BTreeMap<String, JobRecord> = Default::default();
    for job in envs.iter().flat_map(|e| e.jobs("test.spin")) {
        if tenant_of(&job) != tenant || job.state != JobState::Succeeded {
            continue;
        }
        match last.get(&job.id) {
            Some(seen) if seen.started_at >= job.started_at => {}
            _ => {
                last.insert(job.id.clone(), job);
            }
        }
    }
    let last_run_ms = |id: &str| {
        logs.iter()
            .flat_map(|log| log.lines())
            .filter(|l| {
                log_field(l, "job_id") == Some(id) && log_field(l, "outcome") == Some("succeeded")
            })
            .filter_map(|l| log_field(l, "duration_ms")?.parse::<f64>().ok())
            .next_back()
    };
    last.values()
        .filter_map(|j| {
            let (start, end) = (j.started_at?, j.finished_at?);
            if j.id == killed.0
                && start <= killed.1
                && let Some(ms) = last_run_ms(&j.id)
            {
                return Some((end - ms.ceil() as i64, end));
            }
            Some((start, end))
        })
        .chain(extra.iter().copied())
        .collect()
}

fn most_at_once(spans: &[(i64, i64)]) -> usize {
    spans
        .iter()
        .map(|(s, _)| spans.iter().filter(|(s2, e2)| s2 <= s && s < e2).count())
        .max()
        .unwrap_or(0)
}

/// Issue 14 item 4: two hosts, one job of a key at a time. The host
/// running one is killed with SIGKILL, then nats-server is killed and
/// started again while the other host runs the key's next job, then the
/// killed host comes back. No job is lost, and no two jobs of the key ever
/// ran at once: the dead host's slot stays taken (nobody renews it, nobody
/// may take it) until its lease runs out, and a server restart shorter
/// than a lease takes no slot from the job running through it.
#[test]
fn a_host_killed_mid_job_and_a_server_restart_lose_no_job_and_never_run_two_of_a_key() {
    let mut nats = NatsServer::start();
    let cfg = format!(
        r#"poll_interval = "20ms"
drain_timeout = "10s"
[plugin.test-spin]
fuel = 10_000_000_000_000
timeout = "120s"
concurrency = 2
concurrency_key = "/tenant"
per_key_concurrency = 1
[nats]
url = "{}"
ack_wait = "5s"
"#,
        nats.url()
    );
    let ((a, host_a), (b, host_b)) = two_hosts(&cfg);
    assert_eq!(post_lines(&a, &bodies(4, "k", 2_000)).len(), 4);
    let running = |env: &Env| {
        env.jobs("test.spin")
            .into_iter()
            .find(|j| j.state == JobState::Running)
    };
    assert!(
        wait_until(Duration::from_secs(60), || running(&a).is_some()
            || running(&b).is_some()),
        "nothing started\nA:\n{}\nB:\n{}",
        host_a.log_text(),
        host_b.log_text()
    );
    // Kill whichever host runs the key's job, mid-job.
    let (dead_env, dead, live_env, live) = if running(&a).is_some() {
        (&a, host_a, &b, host_b)
    } else {
        (&b, host_b, &a, host_a)
    };
    let killed_job = running(dead_env).expect("a running job");
    dead.kill();
    let killed_at = now_ms();
    // As the dead host left it: still running (or, killed just after it
    // finished, done).
    let left = dead_env.job(&killed_job.id);
    let killed_run = match left.state {
        JobState::Running => {
            let held = holders(&nats);
            assert!(
                held.len() == 1 && held[0].starts_with(&format!("{}@", killed_job.id)),
                "the dead host's slot is still held: {held:?}"
            );
            (killed_job.started_at.expect("started"), killed_at)
        }
        _ => (
            left.started_at.expect("started"),
            left.finished_at.unwrap_or(killed_at),
        ),
    };
    // The live host takes the key only once the dead host's lease ran out.
    assert!(
        wait_until(Duration::from_secs(90), || running(live_env).is_some()),
        "the live host never took the key\n{}",
        live.log_text()
    );
    nats.restart();
    let dead = dead_env.start();
    let done = || succeeded_on(&[&a, &b]);
    assert!(
        wait_until(Duration::from_secs(120), || done() == 4),
        "{} of 4 done (none may be lost)\nlive:\n{}\nrestarted:\n{}",
        done(),
        live.log_text(),
        dead.log_text()
    );
    let logs = [live.log_text(), dead.log_text()];
    let spans = spans(
        &[&a, &b],
        "k",
        &[killed_run],
        (&killed_job.id, killed_run.0),
        &logs,
    );
    assert_eq!(
        most_at_once(&spans),
        1,
        "two jobs of the key ran at once: {spans:?}"
    );
    // Once every job is done, no slot stays taken (the dead host's expired,
    // the others were given back).
    assert!(
        wait_until(Duration::from_secs(40), || holders(&nats).is_empty()),
        "slots still held after every job ended: {:?}",
        holders(&nats)
    );
}
