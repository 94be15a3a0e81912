//! Unique jobs: the same uniqueness key from 64 concurrent posts makes
//! exactly one job (embedded: one daemon; JetStream: two hosts), the
//! others are answered with the job holding the key; `replace` cancels
//! the waiting holder (embedded); the key is free again once the job ends.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::api::{Api, free_port, http_config};
use crate::nats::NatsServer;
use crate::util::{Env, wait_until};

const POST: &str = "/v1/channels/test.counter/messages?unique=order%201&unique_for=10m";

/// 64 posts of one key at once, spread over `apis`: (status, JSON) each.
fn race(apis: &[&Api]) -> Vec<(u16, serde_json::Value)> {
    std::thread::scope(|s| {
        let posts: Vec<_> = (0..64)
            .map(|i| {
                let api = apis[i % apis.len()];
                s.spawn(move || {
                    let r = api.post(POST, &format!("{{\"amount\": {i}}}"));
                    (r.status, r.json())
                })
            })
            .collect();
        posts.into_iter().map(|p| p.join().expect("post")).collect()
    })
}

/// Exactly one 202; every other answer a 409 naming its message.
fn one_won(answers: &[(u16, serde_json::Value)]) -> String {
    let won: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    let id = won[0]["message_id"].as_str().unwrap_or_default().to_owned();
    for (status, v) in answers.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(*status, 409, "{v}");
        assert_eq!(v["duplicate_of"], id.as_str(), "{v}");
        assert!(
            v["job_ids"].as_array().is_some_and(|j| !j.is_empty()),
            "{v}"
        );
    }
    id
}

#[test]
fn sixty_four_posts_of_one_key_make_one_job_and_replace_cancels_the_waiting_one() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    // Paused: the job stays queued while the posts race.
    assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
    let first = one_won(&race(&[&api]));
    let jobs = env.jobs("test.counter");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].message_id, first);
    // The CLI is told too, and queues nothing.
    let out = env.sluice(&[
        "post",
        "test.counter",
        "{\"amount\":1}",
        "--unique",
        "order 1",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), jobs[0].id);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unique key"),
        "{out:?}"
    );
    // Replace: the waiting holder is cancelled, the new post queued.
    let r = api.post(&format!("{POST}&on_duplicate=replace"), "{\"amount\": 100}");
    assert_eq!(r.status, 202, "{}", r.text);
    let v = r.json();
    assert_eq!(v["replaced"], serde_json::json!([jobs[0].id]), "{v}");
    assert_eq!(
        env.job(&jobs[0].id).state,
        sluice::store::JobState::Cancelled
    );
    assert_eq!(api.post("/v1/channels/test.counter/resume", "").status, 200);
    let settled = env.wait_settled("test.counter", 2, Duration::from_secs(60));
    assert_eq!(
        env.state("test-counter", "total"),
        Some("100".into()),
        "{settled:?}"
    );
    // Ended: the key is free again.
    let r = api.post(POST, "{\"amount\": 1}");
    assert_eq!(r.status, 202, "{}", r.text);
    let metrics = api.get("/metrics").text;
    assert!(
        crate::api::metric(
            &metrics,
            "sluice_unique_duplicates_total{outcome=\"rejected\"}"
        ) >= Some(63.0),
        "{metrics}"
    );
    daemon.stop(Duration::from_secs(30));
}

#[test]
fn sixty_four_posts_of_one_key_over_two_jetstream_hosts_make_one_message() {
    let nats = NatsServer::start();
    let host = || {
        let addr = format!("127.0.0.1:{}", free_port());
        let env = Env::new(
            &["test-counter"],
            &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n")),
        );
        (env, addr)
    };
    let ((a, a_addr), (b, b_addr)) = (host(), host());
    let (a_host, b_host) = (a.start(), b.start());
    let (a_api, b_api) = (Api::new(&a_addr, None), Api::new(&b_addr, None));
    a_api.wait_up(&a_host);
    b_api.wait_up(&b_host);
    for api in [&a_api, &b_api] {
        assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
    }
    let first = one_won(&race(&[&a_api, &b_api]));
    let stored: BTreeSet<String> = nats
        .messages("SLUICE")
        .into_iter()
        .filter(|m| m.subject.as_str() == "sluice.test.counter")
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(stored.len(), 1, "one message stored: {stored:?}");
    for api in [&a_api, &b_api] {
        assert_eq!(api.post("/v1/channels/test.counter/resume", "").status, 200);
    }
    // Once its job ended, the key is free again (released at settle).
    assert!(
        wait_until(Duration::from_secs(60), || {
            let r = a_api.post(POST, "{\"amount\": 1}");
            r.status == 202 && r.json()["message_id"] != first.as_str()
        }),
        "{}\n{}",
        a_host.log_text(),
        b_host.log_text()
    );
}

/// Posts `body` with key `order 1` and message id `id` (Idempotency-Key).
fn post_as(api: &Api, id: &str, extra: &str, body: &str) -> (u16, serde_json::Value) {
    let r = api.send(
        "POST",
        &format!("{POST}{extra}"),
        &[("Idempotency-Key", id)],
        Some(body.as_bytes()),
    );
    (r.status, r.json())
}

/// Waits until job `id` succeeded (as the API on `api` says).
fn succeeded(api: &Api, id: &str) -> bool {
    wait_until(Duration::from_secs(60), || {
        api.get(&format!("/v1/jobs/{id}")).json()["state"] == "succeeded"
    })
}

#[test]
fn a_resent_message_neither_takes_the_key_nor_replaces_its_holder() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let (status, n) = post_as(&api, "n-1", "", "{\"amount\": 1}");
    assert_eq!(status, 202, "{n}");
    assert!(succeeded(
        &api,
        n["job_ids"][0].as_str().unwrap_or_default()
    ));
    assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
    let (status, m) = post_as(&api, "m-1", "", "{\"amount\": 2}");
    assert_eq!(status, 202, "{m}");
    // The producer retries N (done long ago), asking to replace.
    let (status, again) = post_as(&api, "n-1", "&on_duplicate=replace", "{\"amount\": 1}");
    assert_eq!(
        (status, again["duplicate"].as_bool()),
        (202, Some(true)),
        "{again}"
    );
    assert_eq!(again["replaced"], serde_json::json!([]), "{again}");
    let m_job = m["job_ids"][0].as_str().unwrap_or_default().to_owned();
    assert_eq!(env.job(&m_job).state, sluice::store::JobState::Queued);
    daemon.stop(Duration::from_secs(30));
}

#[test]
fn a_resent_message_on_jetstream_leaves_the_key_free() {
    let nats = NatsServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::new(
        &["test-counter"],
        &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n")),
    );
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let (status, n) = post_as(&api, "n-1", "", "{\"amount\": 1}");
    assert_eq!(status, 202, "{n}");
    assert!(
        succeeded(&api, n["job_ids"][0].as_str().unwrap_or_default()),
        "{}",
        daemon.log_text()
    );
    // Within the duplicate window: stored nothing, so it holds nothing.
    let (status, again) = post_as(&api, "n-1", "", "{\"amount\": 1}");
    assert_eq!(
        (status, again["duplicate"].as_bool()),
        (202, Some(true)),
        "{again}"
    );
    let r = api.post(POST, "{\"amount\": 2}");
    assert_eq!(r.status, 202, "the key is free: {}", r.text);
}

/// One JetStream host, its API address.
fn jetstream_host(nats: &NatsServer) -> (Env, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::new(
        &["test-counter"],
        &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n")),
    );
    (env, addr)
}

/// The race of two 202s: a pump's pull waits up to `fetch_wait` for its
/// first message, so a pull made before a pause was answered took the
/// winner's message after it, ran it (the channel paused), and the job's
/// end freed the key for a post still racing. Posted right after the
/// pause, the message lands in that pull nearly every time: it must go
/// back to the stream, not run, and its key stay held.
#[test]
fn a_message_pulled_as_its_channel_is_paused_goes_back_and_keeps_its_key() {
    let nats = NatsServer::start();
    let (env, addr) = jetstream_host(&nats);
    let host = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&host);
    for round in 0..3 {
        assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
        // A key of its own each round (the last one's is freed just after
        // its job ended).
        let post =
            format!("/v1/channels/test.counter/messages?unique=round%20{round}&unique_for=10m");
        let r = api.post(&post, &format!("{{\"amount\": {round}}}"));
        assert_eq!(r.status, 202, "{}", r.text);
        let job = r.json()["job_ids"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Recorded once a pull took it; running only until it is decided.
        let mut last = None;
        let pulled = wait_until(Duration::from_secs(5), || {
            last = env.jobs("test.counter").into_iter().find(|j| j.id == job);
            last.as_ref()
                .is_some_and(|j| j.state != sluice::store::JobState::Running)
        });
        if pulled {
            assert_eq!(
                last.as_ref().map(|j| j.state),
                Some(sluice::store::JobState::Queued),
                "round {round}: a paused channel ran a job\n{}",
                host.log_text()
            );
        }
        let again = api.post(&post, "{\"amount\": 1000}");
        assert_eq!(again.status, 409, "round {round}: {}", again.text);
        assert_eq!(api.post("/v1/channels/test.counter/resume", "").status, 200);
        assert!(succeeded(&api, &job), "{}", host.log_text());
    }
    assert_eq!(env.state("test-counter", "total"), Some("3".into()));
}

/// A key released (its job ended) and taken again keeps its
/// time-to-live: it used to be written over the delete marker without
/// one, and a host killed before its release left it held for ever.
#[test]
fn a_key_taken_again_after_its_release_still_expires() {
    const SHORT: &str = "/v1/channels/test.counter/messages?unique=order%202&unique_for=2s";
    let nats = NatsServer::start();
    let (_env, addr) = jetstream_host(&nats);
    let host = _env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&host);
    let r = api.post(SHORT, "{\"amount\": 1}");
    assert_eq!(r.status, 202, "{}", r.text);
    let first = r.json()["job_ids"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(succeeded(&api, &first), "{}", host.log_text());
    // Taken again, by a job that will not end for an hour.
    let held = || api.post(&format!("{SHORT}&delay=1h"), "{\"amount\": 2}");
    assert!(
        wait_until(Duration::from_secs(30), || held().status == 202),
        "the released key was never free again\n{}",
        host.log_text()
    );
    assert_eq!(held().status, 409);
    // Its two seconds end; the job holding it has not.
    assert!(
        wait_until(Duration::from_secs(60), || api
            .post(SHORT, "{\"amount\": 3}")
            .status
            == 202),
        "the key never expired\n{}",
        host.log_text()
    );
}

/// Outbox rows of `env` as `sluice outbox list --json` shows them.
fn outbox_rows(env: &Env) -> Vec<serde_json::Value> {
    env.ok(&["outbox", "list", "--json"])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Issue 14 on JetStream: a handler's posts with a uniqueness key leave
/// through the outbox, and the relay claims the key as the API does. Of
/// twenty jobs on two hosts each posting the same key, one message is
/// published; every other row leaves the outbox unpublished, saying which
/// message holds the key.
#[test]
fn handler_posts_of_one_key_over_two_jetstream_hosts_publish_one_message() {
    let nats = NatsServer::start();
    let config = nats.config("10s", "");
    let (a, b) = (
        Env::new(&["test-wire"], &config),
        Env::new(&["test-wire"], &config),
    );
    let (a_host, b_host) = (a.start(), b.start());
    for host in [&a_host, &b_host] {
        host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    }
    let post =
        r#"{"posts": [{"channel": "test.sink", "headers": [["sluice-unique", "order 1"]]}]}"#;
    let input: String = (0..20).map(|_| format!("{post}\n")).collect();
    assert!(
        a.sluice_stdin(&["post", "test.wire"], &input)
            .status
            .success()
    );
    let mut rows = Vec::new();
    let left = wait_until(Duration::from_secs(60), || {
        rows = outbox_rows(&a).into_iter().chain(outbox_rows(&b)).collect();
        rows.iter().filter(|r| !r["sent_at"].is_null()).count() == 20
    });
    assert!(
        left,
        "{rows:?}\n{}\n{}",
        a_host.log_text(),
        b_host.log_text()
    );
    let refused: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("holds its unique key"))
        })
        .collect();
    assert_eq!(refused.len(), 19, "{rows:?}");
    assert_eq!(
        nats.count("SLUICE", "sluice.test.sink"),
        1,
        "one message published"
    );
    let holder = nats
        .messages("SLUICE")
        .into_iter()
        .find(|m| m.subject.as_str() == "sluice.test.sink")
        .and_then(|m| m.headers.get("Sluice-Id").map(|v| v.as_str().to_owned()))
        .unwrap_or_default();
    assert!(
        refused
            .iter()
            .all(|r| r["error"].as_str().is_some_and(|e| e.contains(&holder))),
        "{holder}: {refused:?}"
    );
}
