//! Shared state (`[nats] shared_state`): a key a call only read is checked
//! at commit, not written (review R6). Readers of one key on several hosts
//! do not conflict with each other (as on one host) and leave the key's
//! version as it was; a read another host's commit made stale still makes
//! the call run again, and no pair of calls can each build on a value the
//! other replaced (write skew).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use sluice::store::{JobRecord, JobState, job_id_for};

use crate::nats::NatsServer;
use crate::shared_state::{config, results, shared_value, start_host, start_hosts, wait_all};
use crate::state::post_lines;
use crate::util::{Daemon, Env};

const CHANNEL: &str = "test.state";

/// The stream sequence of test-state's `key` in the shared store: its
/// version (`None`: never written).
fn shared_version(nats: &NatsServer, key: &str) -> Option<u64> {
    let subject = sluice::transport::state_key_subject("test-state", key);
    nats.with_js(|js| async move {
        let stream = js.get_stream("SLUICE_STATE").await.ok()?;
        let m = stream.direct_get_last_for_subject(subject).await.ok()?;
        Some(m.sequence)
    })
}

fn value(job: &JobRecord) -> Option<i64> {
    let v: Value = serde_json::from_str(job.result.as_deref()?).ok()?;
    v["value"].as_i64()
}

/// Every job's record over the hosts (a job two hosts recorded, the second
/// from its marker, counts once).
fn records(envs: &[Env]) -> BTreeMap<String, JobRecord> {
    envs.iter()
        .flat_map(|e| e.jobs(CHANNEL))
        .filter(|j| j.state == JobState::Succeeded)
        .map(|j| (j.message_id.clone(), j))
        .collect()
}

#[test]
fn calls_on_three_hosts_that_only_read_a_key_commit_without_a_conflict() {
    // 64 calls read `src` and write a key of their own, 8 more only read
    // it, on three hosts at once. A read written back (as it was) gave
    // `src` a new version per commit, so the hosts' readers made each
    // other's reads stale and ran again. One job at a time per host: on a
    // host, two readers of a key take turns (its ledger's), which is not
    // what this counts.
    let nats = NatsServer::start();
    let cfg = format!(
        "{}shared_state = true\n",
        nats.config("3s", "[plugin.test-state]\nconcurrency = 1\n")
    );
    let (envs, hosts) = start_hosts(3, &cfg);
    let hosts: Vec<&Daemon> = hosts.iter().collect();
    envs[0].ok(&["post", CHANNEL, r#"{"key": "src", "by": 7}"#]);
    wait_all(&envs, &hosts, 1);
    let version = shared_version(&nats, "src").expect("src stored");
    let mut lines: String = (0..64)
        .map(|i| {
            format!(
                "{{\"op\": \"copy\", \"from\": \"src\", \"to\": \"out {i} é\", \"hold_ms\": 20}}\n"
            )
        })
        .collect();
    lines.extend((0..8).map(|_| "{\"op\": \"need\", \"key\": \"src\", \"by\": 7}\n".to_owned()));
    post_lines(&envs[0], &lines);
    wait_all(&envs, &hosts, 73);
    assert_eq!(results(&envs).len(), 73, "every job succeeded once");
    for job in records(&envs).values() {
        assert_eq!(value(job), Some(7), "{job:?}");
        assert_eq!(job.conflicts, 0, "no reader ran again: {job:?}");
    }
    let busy = envs.iter().filter(|e| e.jobs(CHANNEL).len() > 1).count();
    assert!(busy >= 2, "the hosts shared the work");
    for i in [0, 31, 63] {
        assert_eq!(shared_value(&nats, &format!("out {i} é")), Some("7".into()));
    }
    assert_eq!(
        shared_version(&nats, "src"),
        Some(version),
        "a key only read is not written"
    );
    assert_eq!(shared_value(&nats, "src"), Some("7".into()));
}

#[test]
fn a_key_only_read_that_another_host_changed_makes_the_commit_run_again() {
    // The host's ledger holds `src` = 1 from its own commit; another host
    // then stores 5. A call that only reads `src` (and writes `dst`) reads
    // the ledger's 1; its commit checks that read, the store refuses it,
    // and the call runs again on 5. Without the check it would commit 1.
    let nats = NatsServer::start();
    let (env, host) = start_host(&config(&nats));
    env.ok(&["post", CHANNEL, r#"{"key": "src"}"#]);
    env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    let subject = "sluice-state.k.test-state.vsrc".to_owned();
    nats.with_js(|js| async move {
        js.publish(subject, b"5".to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
    let id = env.ok(&[
        "post",
        CHANNEL,
        r#"{"op": "copy", "from": "src", "to": "dst"}"#,
    ]);
    env.wait_settled(CHANNEL, 2, Duration::from_secs(60));
    let job = env.job(&job_id_for(id.trim(), "test-state"));
    assert_eq!(job.state, JobState::Succeeded, "{}", host.log_text());
    assert_eq!(value(&job), Some(5), "built on the stored value");
    assert!(job.conflicts >= 1, "it ran again: {}", job.conflicts);
    assert_eq!(shared_value(&nats, "dst"), Some("5".into()));
}

#[test]
fn two_calls_that_each_copy_the_key_the_other_copies_never_both_commit() {
    // Write skew: `copy a -> b` and `copy b -> a` with a = 1, b = 2. Run
    // one after the other they leave a == b (1, 1 or 2, 2); both building
    // on the value before would swap them (2, 1). Each only reads the key
    // the other writes, so only the check of a read (not a write) stands
    // in the way. Many pairs at once on three hosts, 64 jobs each, so
    // pairs meet across hosts and in one host's batch.
    let nats = NatsServer::start();
    let (envs, hosts) = start_hosts(3, &config(&nats));
    let hosts: Vec<&Daemon> = hosts.iter().collect();
    let pairs = 60;
    let setup: String = (0..pairs)
        .map(|i| format!("{{\"key\": \"a{i}\", \"by\": 1}}\n{{\"key\": \"b{i}\", \"by\": 2}}\n"))
        .collect();
    post_lines(&envs[0], &setup);
    wait_all(&envs, &hosts, 2 * pairs);
    let copies: String = (0..pairs)
        .map(|i| {
            format!(
                "{{\"op\": \"copy\", \"from\": \"a{i}\", \"to\": \"b{i}\", \"hold_ms\": 5}}\n\
                 {{\"op\": \"copy\", \"from\": \"b{i}\", \"to\": \"a{i}\", \"hold_ms\": 5}}\n"
            )
        })
        .collect();
    post_lines(&envs[0], &copies);
    wait_all(&envs, &hosts, 4 * pairs);
    let conflicts: u32 = records(&envs).values().map(|j| j.conflicts).sum();
    eprintln!("write skew: {conflicts} re-runs for {} copies", 2 * pairs);
    for i in 0..pairs {
        let a = shared_value(&nats, &format!("a{i}"));
        let b = shared_value(&nats, &format!("b{i}"));
        assert!(
            a == b && (a.as_deref() == Some("1") || a.as_deref() == Some("2")),
            "pair {i}: a = {a:?}, b = {b:?}"
        );
    }
}
