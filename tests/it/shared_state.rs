//! Issue 17: with `[nats] shared_state = true`, a plugin's state is one
//! store for every host (the `SLUICE_STATE` stream). A counter on one key
//! driven by three hosts returns exactly 1..N (each value once, whichever
//! host ran the job) and ends at N, also with hosts killed -9 and the
//! nats-server killed and restarted in the middle.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::state::post_lines;
use crate::util::{Daemon, Env, wait_until};

const CHANNEL: &str = "test.state";

pub(crate) fn config(nats: &NatsServer) -> String {
    config_with(nats, "")
}

/// [`config`] with more of test-state's table.
pub(crate) fn config_with(nats: &NatsServer, plugin: &str) -> String {
    format!(
        "{}shared_state = true\n",
        nats.config(
            "3s",
            &format!("[plugin.test-state]\nconcurrency = 64\n{plugin}")
        )
    )
}

/// The value of test-state's `key` in the shared store.
pub(crate) fn shared_value(nats: &NatsServer, key: &str) -> Option<String> {
    let subject = sluice::transport::state_key_subject("test-state", key);
    nats.with_js(|js| async move {
        let stream = js.get_stream("SLUICE_STATE").await.ok()?;
        let m = stream.direct_get_last_for_subject(subject).await.ok()?;
        Some(String::from_utf8_lossy(&m.payload).into_owned())
    })
}

/// Message id -> the counter value its job returned, over every host's
/// records; a job recorded by two hosts (the second from its commit
/// marker) must have returned the same value on both.
pub(crate) fn results(envs: &[Env]) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for env in envs {
        for job in env.jobs(CHANNEL) {
            if job.state != JobState::Succeeded {
                continue;
            }
            let v: Value =
                serde_json::from_str(job.result.as_deref().unwrap_or("null")).expect("result json");
            let value = v["value"].as_i64().expect("value");
            if let Some(before) = out.insert(job.message_id.clone(), value) {
                assert_eq!(
                    before, value,
                    "two hosts recorded {} differently",
                    job.message_id
                );
            }
        }
    }
    out
}

fn assert_exact(nats: &NatsServer, envs: &[Env], n: usize) {
    let got = results(envs);
    assert_eq!(got.len(), n, "every message succeeded");
    let values: BTreeSet<i64> = got.values().copied().collect();
    assert_eq!(values.len(), n, "each value returned once: {values:?}");
    assert_eq!(values.first(), Some(&1));
    assert_eq!(values.last(), Some(&(n as i64)));
    assert_eq!(shared_value(nats, "hot"), Some(n.to_string()));
    for env in envs {
        assert_eq!(
            env.local_state("test-state", "hot"),
            None,
            "no host keeps its own copy"
        );
    }
}

fn post(env: &Env, n: usize) {
    let lines: String = (0..n).map(|_| "{\"key\": \"hot\"}\n").collect();
    post_lines(env, &lines);
}

/// One host of test-state on `cfg`, started and running.
pub(crate) fn start_host(cfg: &str) -> (Env, Daemon) {
    let env = Env::new(&["test-state"], cfg);
    let host = env.start();
    wait_running(&[&host]);
    (env, host)
}

/// `n` hosts of test-state on `cfg`, each with a data dir of its own,
/// started and running.
pub(crate) fn start_hosts(n: usize, cfg: &str) -> (Vec<Env>, Vec<Daemon>) {
    let envs: Vec<Env> = (0..n).map(|_| Env::new(&["test-state"], cfg)).collect();
    let hosts: Vec<Daemon> = envs.iter().map(Env::start).collect();
    wait_running(&hosts.iter().collect::<Vec<_>>());
    (envs, hosts)
}

/// Stores, the way a host's commit of job `id` (message `id`, slice 0, no
/// cursor) would: test-state's `hot` = 41, and the job's marker (result
/// `{"value":41}`, one post to `test.after`). A host that gets the
/// message must record it from the marker, not run it.
pub(crate) fn commit_by_hand(nats: &NatsServer, id: &str) {
    let job = sluice::store::job_id_for(id, "test-state");
    let commit: String = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Job id, slice ("0": the message itself), no cursor.
        h.update(job.as_bytes());
        h.update([0]);
        h.update(b"0");
        h.update([0]);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    };
    let marker = serde_json::json!({
        "result": "{\"value\":41}",
        "next": null,
        "progress": null,
        "posts": [{
            "message": {
                "id": format!("{id}/test-state/0"),
                "channel": "test.after",
                "kind": "command",
                "headers": [],
                "body": b"{}".to_vec(),
            },
            "visible_at": 0,
            "expires_at": null,
        }],
    });
    nats.with_js(|js| async move {
        for (subject, body) in [
            ("sluice-state.k.test-state.vhot".to_owned(), b"41".to_vec()),
            (
                format!("sluice-state.c.{commit}"),
                marker.to_string().into_bytes(),
            ),
        ] {
            js.publish(subject, body.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    });
}

pub(crate) fn wait_running(hosts: &[&Daemon]) {
    for host in hosts {
        assert!(
            wait_until(Duration::from_secs(60), || host
                .log_text()
                .contains("sluice running")),
            "{}",
            host.log_text()
        );
    }
}

/// Waits until `n` messages succeeded over the hosts' records.
pub(crate) fn wait_all(envs: &[Env], hosts: &[&Daemon], n: usize) {
    let ok = wait_until(Duration::from_secs(240), || results(envs).len() >= n);
    let logs: Vec<String> = hosts.iter().map(|h| h.log_text()).collect();
    assert!(
        ok,
        "{} of {n}\n{}",
        results(envs).len(),
        logs.join("\n----\n")
    );
}

#[test]
fn three_hosts_share_one_counter_exactly() {
    let nats = NatsServer::start();
    let cfg = config(&nats);
    let (envs, hosts) = start_hosts(3, &cfg);
    let n = 300;
    post(&envs[0], n);
    wait_all(&envs, &hosts.iter().collect::<Vec<_>>(), n);
    assert_exact(&nats, &envs, n);
    let reruns: Vec<u32> = envs
        .iter()
        .flat_map(|e| e.jobs(CHANNEL))
        .map(|j| j.conflicts)
        .collect();
    eprintln!(
        "shared state, three hosts: {} re-runs for {n} jobs, at most {} for one",
        reruns.iter().sum::<u32>(),
        reruns.iter().max().unwrap_or(&0)
    );
    let busy = envs.iter().filter(|e| !e.jobs(CHANNEL).is_empty()).count();
    assert!(busy >= 2, "the hosts shared the work");
    for host in &hosts {
        assert!(
            !host.log_text().contains("STATE IS SPLIT"),
            "every host shares state: no split to report\n{}",
            host.log_text()
        );
    }
}

#[test]
fn a_hot_key_and_spread_keys_from_three_hosts_commit_exactly_in_shared_batches() {
    // A host commits its concurrent jobs' state together, one atomic batch
    // for many jobs (`transport/jetstream/state_commit.rs`). Mixing one
    // hot key (whose commits from other hosts make batches stale) with a
    // key per message puts stale and valid jobs in one batch: the refused
    // batch must be sorted out so that every valid job still commits once
    // and every stale one runs again.
    let nats = NatsServer::start();
    let cfg = config(&nats);
    let (envs, hosts) = start_hosts(3, &cfg);
    let n = 200;
    let lines: String = (0..n)
        .map(|i| format!("{{\"key\": \"hot\"}}\n{{\"key\": \"k{i}\"}}\n"))
        .collect();
    post_lines(&envs[0], &lines);
    wait_all(&envs, &hosts.iter().collect::<Vec<_>>(), 2 * n);
    let got = results(&envs);
    assert_eq!(got.len(), 2 * n, "every message succeeded once");
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for value in got.values() {
        *counts.entry(*value).or_default() += 1;
    }
    assert_eq!(
        counts.get(&1),
        Some(&(n + 1)),
        "each spread key counted once, and hot's first"
    );
    for v in 2..=n as i64 {
        assert_eq!(
            counts.get(&v),
            Some(&1),
            "hot's value {v} returned once: {counts:?}"
        );
    }
    assert_eq!(shared_value(&nats, "hot"), Some(n.to_string()));
    for i in [0, n / 2, n - 1] {
        assert_eq!(shared_value(&nats, &format!("k{i}")), Some("1".into()));
    }
}

#[test]
fn commit_markers_expire_after_twice_the_work_streams_max_age_and_the_state_stays() {
    // Markers would otherwise pile up, one per stateful job. They carry a
    // TTL of twice the work stream's max_age (after which no message that
    // could bring the job back is left, see `marker_ttl`); the state they
    // were committed with stays.
    let nats = NatsServer::start();
    let cfg = format!(
        "{}max_age = \"10s\"\nduplicate_window = \"1s\"\n",
        config(&nats)
    );
    let env = Env::new(&["test-state"], &cfg);
    let host = env.start();
    wait_running(&[&host]);
    env.ok(&["post", CHANNEL, r#"{"key": "hot"}"#]);
    let jobs = env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    assert_eq!(jobs[0].state, JobState::Succeeded, "{}", host.log_text());
    assert!(
        wait_until(Duration::from_secs(120), || nats
            .count("SLUICE_STATE", "sluice-state.c.>")
            == 0),
        "the marker expired"
    );
    assert_eq!(
        shared_value(&nats, "hot"),
        Some("1".into()),
        "the state stays"
    );
}

#[test]
fn a_shared_counter_stays_exact_through_kills_and_a_nats_restart() {
    let mut nats = NatsServer::start();
    let cfg = config(&nats);
    let envs: Vec<Env> = (0..3).map(|_| Env::new(&["test-state"], &cfg)).collect();
    let mut hosts: Vec<Option<Daemon>> = envs.iter().map(|e| Some(e.start())).collect();
    wait_running(&hosts.iter().flatten().collect::<Vec<_>>());
    let n = 600;
    post(&envs[0], n);
    for round in 0..6 {
        let before = results(&envs).len();
        if before >= n {
            break;
        }
        wait_until(Duration::from_secs(60), || results(&envs).len() > before);
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..200)));
        if round == 3 {
            nats.restart();
            eprintln!(
                "shared state: nats-server restarted after {} of {n}",
                results(&envs).len()
            );
            continue;
        }
        let victim = fastrand::usize(0..3);
        if let Some(host) = hosts[victim].take() {
            host.kill();
        }
        eprintln!(
            "shared state: host {victim} killed after {} of {n}",
            results(&envs).len()
        );
        hosts[victim] = Some(envs[victim].start());
    }
    wait_all(&envs, &hosts.iter().flatten().collect::<Vec<_>>(), n);
    assert_exact(&nats, &envs, n);
}

#[test]
fn a_job_whose_commit_is_in_the_shared_store_is_recorded_from_it_not_run_again() {
    // The crash point that matters most: a host stored a job's state
    // commit (its key and marker, in one batch) and was killed before it
    // recorded the job or acked it. Made here by writing that batch's
    // result by hand; the host that then gets the message must record the
    // marker's outcome and post, and leave the state as it is.
    let nats = NatsServer::start();
    let env = Env::new(&["test-state"], &config(&nats));
    let host = env.start();
    wait_running(&[&host]);
    host.kill();
    let id = "crashed-after-commit";
    commit_by_hand(&nats, id);
    env.ok(&["post", CHANNEL, r#"{"key": "hot"}"#, "--id", id]);
    let host = env.start();
    let jobs = env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    assert_eq!(jobs[0].state, JobState::Succeeded, "{}", host.log_text());
    assert_eq!(
        jobs[0].result.as_deref(),
        Some("{\"value\":41}"),
        "the marker's outcome"
    );
    assert_eq!(
        shared_value(&nats, "hot"),
        Some("41".into()),
        "not run again"
    );
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .count("SLUICE", "sluice.test.after")
            == 1),
        "the marker's post went out once\n{}",
        host.log_text()
    );
}

#[test]
fn a_hot_key_on_one_host_chains_its_jobs_into_shared_batches_exactly() {
    // On one host the next job on a hot key reads its predecessor's value
    // before the store answered, and its commit follows the predecessor's
    // in the same atomic batch (`state/remote.rs`, `state_commit.rs`):
    // fewer batches than jobs, and still exactly 1..N.
    let nats = NatsServer::start();
    let env = Env::new(&["test-state"], &config(&nats));
    let host = env.start();
    wait_running(&[&host]);
    let n = 200;
    post(&env, n);
    wait_all(std::slice::from_ref(&env), &[&host], n);
    assert_exact(&nats, std::slice::from_ref(&env), n);
    let batches: BTreeSet<String> = nats
        .messages("SLUICE_STATE")
        .iter()
        .filter(|m| m.subject.starts_with("sluice-state.c."))
        .map(|m| {
            m.headers
                .get("Nats-Batch-Id")
                .map(|v| v.as_str().to_owned())
                .expect("a marker is stored by an atomic batch")
        })
        .collect();
    eprintln!("one host, hot key: {n} jobs in {} batches", batches.len());
    assert!(
        batches.len() < n,
        "{n} jobs took {} batches: jobs on the hot key did not share one",
        batches.len()
    );
}

#[test]
fn sluice_send_reads_the_shared_store_when_state_is_shared() {
    // `sluice send` shows what a call would commit: with shared state that
    // is built on the shared store's value, not this host's SQLite.
    let nats = NatsServer::start();
    let env = Env::new(&["test-state"], &config(&nats));
    let host = env.start();
    wait_running(&[&host]);
    post(&env, 3);
    wait_all(std::slice::from_ref(&env), &[&host], 3);
    let out = env.ok(&["send", CHANNEL, r#"{"key": "hot"}"#, "--json"]);
    let v: Value = serde_json::from_str(out.lines().next().expect("a line")).expect("json");
    assert_eq!(v["effects"]["state_writes"]["hot"], "4", "{out}");
    assert_eq!(
        shared_value(&nats, "hot"),
        Some("3".into()),
        "send commits nothing"
    );
}

#[test]
fn hosts_that_do_not_share_state_say_it_is_split() {
    // Two hosts on one JetStream, shared_state switched off: each counts its own
    // share. Each host sees the other in SLUICE_HOSTS; one with the
    // plugin's state in its SQLite warns and `/v1/plugins` says so.
    let nats = NatsServer::start();
    let mut envs = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let (_, addr) = crate::api::http_config("");
        let extra = format!("[plugin.test-state]\nconcurrency = 4\n[http]\naddr = \"{addr}\"\n");
        let cfg = format!("{}shared_state = false\n", nats.config("3s", &extra));
        envs.push(Env::new(&["test-state"], &cfg));
        addrs.push(addr);
    }
    let hosts: Vec<Daemon> = envs.iter().map(Env::start).collect();
    wait_running(&hosts.iter().collect::<Vec<_>>());
    let lines: String = (0..20)
        .map(|i| format!("{{\"key\": \"k{i}\"}}\n"))
        .collect();
    post_lines(&envs[0], &lines);
    wait_all(&envs, &hosts.iter().collect::<Vec<_>>(), 20);
    let warned = |h: &Daemon| h.log_text().contains("STATE IS SPLIT");
    assert!(
        wait_until(Duration::from_secs(60), || hosts.iter().any(warned)),
        "no host warned:\n{}\n----\n{}",
        hosts[0].log_text(),
        hosts[1].log_text()
    );
    for (i, host) in hosts.iter().enumerate() {
        let api = crate::api::Api::new(&addrs[i], None);
        let has_state = envs[i]
            .jobs(CHANNEL)
            .iter()
            .any(|j| j.state == JobState::Succeeded);
        if !has_state {
            continue;
        }
        // Its next beat has seen the other host.
        assert!(
            wait_until(Duration::from_secs(30), || warned(host)),
            "host {i} ran jobs with state and did not warn:\n{}",
            host.log_text()
        );
        let v = api.get("/v1/plugins").json();
        assert_eq!(v["state"]["shared"], false, "{v}");
        assert_eq!(v["state"]["hosts"], 2, "{v}");
        assert_eq!(v["state"]["split"][0], "test-state", "{v}");
        assert_eq!(v["plugins"][0]["state_split"], true, "{v}");
    }
}
