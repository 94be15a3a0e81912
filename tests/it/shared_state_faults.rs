//! Shared state (`[nats] shared_state`) where the easy path is not taken: a
//! failure decided on a value another host changed, a post too large for a
//! marker written as JSON numbers, a state store that refuses commits, a
//! cancel that lost to a stored commit, and deleted keys' tombstones.

use std::time::Duration;

use serde_json::Value;
use sluice::store::{JobState, job_id_for};

use crate::nats::NatsServer;
use crate::shared_state::{
    commit_by_hand, config, config_with, shared_value, start_host, wait_running,
};
use crate::util::{Env, wait_until};

const CHANNEL: &str = "test.state";

fn value(result: Option<&str>) -> Option<i64> {
    let v: Value = serde_json::from_str(result?).ok()?;
    v["value"].as_i64()
}

/// A commit marker in the shared store.
fn a_marker(nats: &NatsServer) -> async_nats::jetstream::message::StreamMessage {
    nats.messages("SLUICE_STATE")
        .into_iter()
        .find(|m| m.subject.starts_with("sluice-state.c."))
        .expect("a marker")
}

/// Stores `body` as test-state's `key` the way another host's commit
/// would: a plain publish to the key's subject.
fn write_by_hand(nats: &NatsServer, key: &str, body: &str) {
    let subject = format!("sluice-state.k.test-state.v{key}");
    let body = body.to_owned();
    nats.with_js(|js| async move {
        js.publish(subject, body.into_bytes().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
}

#[test]
fn a_failure_decided_on_a_value_another_host_changed_runs_again_on_the_stored_one() {
    // The host's ledger holds `gate` = 1 from its own commit. Another host
    // then stores 5. A job that needs 5 reads the ledger's 1 and fails
    // (permanently, so with the stale value it would be dead at once):
    // before the failure is recorded its read is checked against the
    // store, found stale, and the call runs again on 5.
    let nats = NatsServer::start();
    let cfg = config_with(&nats, "max_attempts = 1\n");
    let (env, host) = start_host(&cfg);
    env.ok(&["post", CHANNEL, r#"{"key": "gate"}"#]);
    env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    write_by_hand(&nats, "gate", "5");
    let id = env.ok(&["post", CHANNEL, r#"{"op": "need", "key": "gate", "by": 5}"#]);
    let jobs = env.wait_settled(CHANNEL, 2, Duration::from_secs(60));
    let job = jobs
        .iter()
        .find(|j| j.message_id == id.trim())
        .expect("the job");
    assert_eq!(job.state, JobState::Succeeded, "{}", host.log_text());
    assert_eq!(
        value(job.result.as_deref()),
        Some(5),
        "decided on the stored value"
    );
    assert!(job.conflicts >= 1, "it ran again: {}", job.conflicts);
}

#[test]
fn a_stateful_call_may_post_600_kb() {
    // The post goes into the job's commit marker with the state write; a
    // body written as a JSON array of numbers took ~4 bytes a byte and the
    // marker outgrew the server's max_payload (1 MiB), so the job died.
    let nats = NatsServer::start();
    let (env, host) = start_host(&config(&nats));
    env.ok(&[
        "post",
        CHANNEL,
        r#"{"op": "post", "key": "big", "bytes": 600000}"#,
    ]);
    let jobs = env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    assert_eq!(jobs[0].state, JobState::Succeeded, "{}", host.log_text());
    assert_eq!(shared_value(&nats, "big"), Some("1".into()));
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .count("SLUICE", "sluice.test.after")
            == 1),
        "the post went out\n{}",
        host.log_text()
    );
    let marker = a_marker(&nats);
    assert!(
        marker.payload.len() < 600_000 + 4096,
        "the marker holds the body as it is: {} bytes",
        marker.payload.len()
    );
}

/// Sets the state stream's message limit (refusing new messages past it;
/// -1: none).
fn limit_state_stream(nats: &NatsServer, max_messages: i64) {
    nats.with_js(|js| async move {
        let mut stream = js.get_stream("SLUICE_STATE").await.expect("stream");
        let mut config = stream.info().await.expect("info").config.clone();
        config.max_messages = max_messages;
        config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
        js.update_stream(config).await.expect("update");
    });
}

#[test]
fn a_state_store_that_refuses_commits_costs_the_job_no_attempts() {
    // A full store (here: a message limit with discard new) answers every
    // commit with an error: nothing is stored. That is not "maybe stored":
    // the job is put back to run later, without an attempt, however long
    // the store stays full; it was dead after max_attempts redeliveries.
    let nats = NatsServer::start();
    let cfg = config_with(&nats, "max_attempts = 2\n");
    let (env, host) = start_host(&cfg);
    env.ok(&["post", CHANNEL, r#"{"key": "k0"}"#]);
    env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    limit_state_stream(&nats, 2);
    let id = env.ok(&["post", CHANNEL, r#"{"key": "k1"}"#]);
    let job = job_id_for(id.trim(), "test-state");
    // Refused again and again: longer than max_attempts ack waits (3 s).
    host.wait_log(&["refused its commit"], 3, Duration::from_secs(120));
    let record = env.job(&job);
    assert!(
        !matches!(record.state, JobState::Dead | JobState::Succeeded),
        "{:?}\n{}",
        record.state,
        host.log_text()
    );
    assert!(record.attempts <= 1, "attempts: {}", record.attempts);
    assert_eq!(shared_value(&nats, "k1"), None, "nothing stored");
    limit_state_stream(&nats, -1);
    let jobs = env.wait_settled(CHANNEL, 2, Duration::from_secs(60));
    let done = jobs.iter().find(|j| j.id == job).expect("the job");
    assert_eq!(done.state, JobState::Succeeded, "{}", host.log_text());
    assert_eq!(shared_value(&nats, "k1"), Some("1".into()));
}

#[test]
fn a_job_cancelled_after_its_commit_was_stored_is_recorded_from_the_marker() {
    // A host stored the job's state batch (key and marker) and died before
    // it recorded or acked it; an operator then cancelled the job, which
    // no host had recorded. The host that gets the message finds it
    // cancelled, but the marker is the fact: state applied means the
    // outcome and posts are recorded too, not dropped.
    let nats = NatsServer::start();
    let (_, addr) = crate::api::http_config("");
    let cfg = format!("{}[http]\naddr = \"{addr}\"\n", config(&nats));
    let env = Env::new(&["test-state"], &cfg);
    let host = env.start();
    let api = crate::api::Api::new(&addr, None);
    api.wait_up(&host);
    wait_running(&[&host]);
    let id = "cancelled-after-commit";
    let job = job_id_for(id, "test-state");
    commit_by_hand(&nats, id);
    let cancel = api.delete(&format!("/v1/jobs/{job}"));
    assert_eq!(cancel.status, 202, "{}", cancel.text);
    let cancelled = || {
        env.try_job(&job)
            .is_some_and(|j| j.state == JobState::Cancelled)
    };
    assert!(
        wait_until(Duration::from_secs(30), cancelled),
        "{}",
        host.log_text()
    );
    env.ok(&["post", CHANNEL, r#"{"key": "hot"}"#, "--id", id]);
    assert!(
        wait_until(Duration::from_secs(60), || env.job(&job).state
            == JobState::Succeeded),
        "{:?}\n{}",
        env.job(&job).state,
        host.log_text()
    );
    assert_eq!(env.job(&job).result.as_deref(), Some("{\"value\":41}"));
    assert_eq!(shared_value(&nats, "hot"), Some("41".into()), "not run");
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .count("SLUICE", "sluice.test.after")
            == 1),
        "the marker's post went out\n{}",
        host.log_text()
    );
}

#[test]
fn a_deleted_keys_tombstone_is_pruned_and_the_key_reads_absent() {
    // A delete leaves a tombstone (an empty message marked deleted); with
    // a TTL of twice the work stream's max_age the server prunes it, and
    // the key then reads as it did, absent.
    let nats = NatsServer::start();
    let cfg = format!(
        "{}max_age = \"10s\"\nduplicate_window = \"1s\"\n",
        config(&nats)
    );
    let (env, host) = start_host(&cfg);
    env.ok(&["post", CHANNEL, r#"{"key": "gone"}"#]);
    env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    env.ok(&["post", CHANNEL, r#"{"op": "delete", "key": "gone"}"#]);
    env.wait_settled(CHANNEL, 2, Duration::from_secs(60));
    let subject = "sluice-state.k.test-state.vgone";
    assert_eq!(nats.count("SLUICE_STATE", subject), 1, "the tombstone");
    assert!(
        wait_until(Duration::from_secs(120), || nats
            .count("SLUICE_STATE", subject)
            == 0),
        "the tombstone was pruned"
    );
    env.ok(&["post", CHANNEL, r#"{"key": "gone"}"#]);
    let jobs = env.wait_settled(CHANNEL, 3, Duration::from_secs(60));
    let values: Vec<Option<i64>> = jobs.iter().map(|j| value(j.result.as_deref())).collect();
    assert!(
        values.iter().filter(|v| **v == Some(1)).count() == 2,
        "counted from absent again: {values:?}\n{}",
        host.log_text()
    );
}

#[test]
fn commit_markers_last_as_long_as_the_work_stream_keeps_messages_whatever_the_config_says() {
    // The work stream keeps the max_age it was created with (a host never
    // changes it): here 7 days, the first host's default. A host set to
    // max_age = 4s gave its markers 8 s while the job's message stayed in
    // the stream for a week: once the marker was gone, a consumer created
    // again from the start (an operator removed it) delivered the message
    // to a host that did not know the job, which ran it again and applied
    // its state twice. Markers follow the stream's max_age now.
    let nats = NatsServer::start();
    let (_first, host) = start_host(&config(&nats));
    assert!(host.stop(Duration::from_secs(30)).success());
    let short = format!(
        "{}max_age = \"4s\"\nduplicate_window = \"1s\"\n",
        config(&nats)
    );
    let (env, host) = start_host(&short);
    assert!(
        host.log_text()
            .contains("keeps messages for its own max_age"),
        "said so: {}",
        host.log_text()
    );
    env.ok(&["post", CHANNEL, r#"{"key": "once"}"#]);
    let jobs = env.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    assert_eq!(jobs[0].state, JobState::Succeeded, "{}", host.log_text());
    let marker = a_marker(&nats);
    let ttl = marker
        .headers
        .get("Nats-TTL")
        .map(|v| v.as_str().to_owned());
    assert_eq!(
        ttl.as_deref(),
        Some("1209600s"),
        "twice the stream's 7 days"
    );
    assert!(host.stop(Duration::from_secs(30)).success());
    // Past the 8 s the config's max_age would have given the marker.
    std::thread::sleep(Duration::from_secs(10));
    nats.with_js(|js| async move {
        use futures_util::StreamExt;
        let stream = js.get_stream("SLUICE").await.expect("stream");
        let mut names = stream.consumer_names();
        while let Some(Ok(name)) = names.next().await {
            stream
                .delete_consumer(&name)
                .await
                .expect("delete consumer");
        }
    });
    // A host that never saw the job: its consumer starts from the first
    // message again.
    let other = Env::new(&["test-state"], &short);
    let host = other.start();
    let jobs = other.wait_settled(CHANNEL, 1, Duration::from_secs(60));
    assert_eq!(jobs[0].state, JobState::Succeeded, "{}", host.log_text());
    assert_eq!(value(jobs[0].result.as_deref()), Some(1), "from the marker");
    assert_eq!(
        shared_value(&nats, "once"),
        Some("1".into()),
        "not applied twice"
    );
}
