//! Unique jobs with `on_duplicate = replace` on JetStream (shared state
//! on, the default): a replace post takes the key from a waiting holder,
//! which then never runs on any host; a running holder keeps it (the post
//! is refused, as on the embedded queue); a replace racing the holder's
//! start or release never lets both run; a holder whose host is killed
//! mid-job keeps its key for its redelivery.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::api::{Api, free_port};
use crate::nats::NatsServer;
use crate::util::{Daemon, Env, wait_until};

/// A JetStream host serving `plugins` with its API; its address.
fn host(nats: &NatsServer, plugins: &[&str], ack_wait: &str) -> (Env, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::new(
        plugins,
        &nats.config(ack_wait, &format!("[http]\naddr = \"{addr}\"\n")),
    );
    (env, addr)
}

/// Starts `env`, waits for its API.
fn up(env: &Env, addr: &str) -> (Daemon, Api) {
    let daemon = env.start();
    let api = Api::new(addr, None);
    api.wait_up(&daemon);
    (daemon, api)
}

/// `key`, percent-encoded for a query string.
fn query(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The post path of `channel` with uniqueness key `key`, replacing.
fn replace(channel: &str, key: &str) -> String {
    format!(
        "/v1/channels/{channel}/messages?unique={}&unique_for=10m&on_duplicate=replace",
        query(key)
    )
}

fn first_job(v: &serde_json::Value) -> String {
    v["job_ids"][0].as_str().unwrap_or_default().to_owned()
}

/// The state of job `id` as `api` answers for it.
fn state_of(api: &Api, id: &str) -> String {
    api.get(&format!("/v1/jobs/{id}")).json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until job `id` is in `state` on `api`.
fn reaches(api: &Api, id: &str, state: &str) -> bool {
    wait_until(Duration::from_secs(60), || state_of(api, id) == state)
}

/// Posts `body` to `post` until it is queued (a 409 while the holder that
/// just ended is not released yet queues nothing); it replaced nothing.
fn free_again(api: &Api, post: &str, body: &str) -> serde_json::Value {
    let mut last = None;
    let queued = wait_until(Duration::from_secs(30), || {
        let r = api.post(post, body);
        let done = r.status == 202;
        last = Some((r.status, r.text));
        done
    });
    assert!(queued, "{last:?}");
    let v: serde_json::Value =
        serde_json::from_str(&last.map(|l| l.1).unwrap_or_default()).unwrap_or_default();
    assert_eq!(v["replaced"], serde_json::json!([]), "{v}");
    v
}

/// The values of every key entry of `SLUICE_UNIQUE` (not tombstones).
fn unique_entries(nats: &NatsServer) -> Vec<String> {
    use futures_util::StreamExt as _;
    nats.with_js(|js| async move {
        let Ok(kv) = js.get_key_value("SLUICE_UNIQUE").await else {
            return Vec::new();
        };
        let Ok(keys) = kv.keys().await else {
            return Vec::new();
        };
        let keys: Vec<String> = keys.filter_map(|k| async move { k.ok() }).collect().await;
        let mut out = Vec::new();
        for k in keys.iter().filter(|k| !k.starts_with("replaced.")) {
            if let Ok(Some(v)) = kv.get(k).await {
                out.push(String::from_utf8_lossy(&v).into_owned());
            }
        }
        out
    })
}

/// 64 replace posts of one key at once through two hosts' APIs, both
/// channels paused: each post takes the key from the one before it, so
/// the answers form one chain. Every post is queued; 63 are replaced and
/// cancelled on both hosts, and never run; the last holder runs once.
#[test]
fn replace_on_two_jetstream_hosts_cancels_the_waiting_holder_everywhere() {
    let nats = NatsServer::start();
    let ((a, a_addr), (b, b_addr)) = (
        host(&nats, &["test-counter"], "10s"),
        host(&nats, &["test-counter"], "10s"),
    );
    let ((a_host, a_api), (b_host, b_api)) = (up(&a, &a_addr), up(&b, &b_addr));
    for api in [&a_api, &b_api] {
        assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
    }
    let post = replace("test.counter", "order.1 ü");
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let posts: Vec<_> = (1..=64)
            .map(|i| {
                let (api, post) = (if i % 2 == 0 { &a_api } else { &b_api }, &post);
                s.spawn(move || {
                    let r = api.post(post, &format!("{{\"amount\": {i}}}"));
                    (r.status, r.json())
                })
            })
            .collect();
        posts.into_iter().map(|p| p.join().expect("post")).collect()
    });
    for (status, v) in &answers {
        assert_eq!(*status, 202, "{v}");
    }
    let jobs: BTreeSet<String> = answers.iter().map(|(_, v)| first_job(v)).collect();
    assert_eq!(jobs.len(), 64, "{answers:?}");
    let mut replaced = Vec::new();
    for (_, v) in &answers {
        let r = v["replaced"].as_array().cloned().unwrap_or_default();
        assert!(r.len() <= 1, "{v}");
        replaced.extend(r.iter().filter_map(|j| j.as_str().map(str::to_owned)));
    }
    let replaced_set: BTreeSet<String> = replaced.iter().cloned().collect();
    assert_eq!(replaced.len(), 63, "one chain: {answers:?}");
    assert_eq!(replaced_set.len(), 63, "each replaced once: {answers:?}");
    let last: Vec<&String> = jobs.difference(&replaced_set).collect();
    assert_eq!(last.len(), 1, "{answers:?}");
    let last = last[0].clone();
    let amount = answers
        .iter()
        .position(|(_, v)| first_job(v) == last)
        .map(|i| i64::try_from(i).unwrap_or(0) + 1)
        .unwrap_or_default();
    // Cancelled on both hosts before anything runs.
    for api in [&a_api, &b_api] {
        for id in &replaced_set {
            assert!(reaches(api, id, "cancelled"), "{id}: {}", state_of(api, id));
        }
    }
    for api in [&a_api, &b_api] {
        assert_eq!(api.post("/v1/channels/test.counter/resume", "").status, 200);
    }
    assert!(
        reaches(&a_api, &last, "succeeded"),
        "{}\n{}",
        a_host.log_text(),
        b_host.log_text()
    );
    // The holder ended: its key is free (once its host released it), and
    // nothing else ran.
    let again = free_again(&a_api, &post, "{\"amount\": 1000}");
    assert!(reaches(&b_api, &first_job(&again), "succeeded"));
    assert_eq!(
        a.state("test-counter", "total"),
        Some((amount + 1000).to_string()),
        "only the last holder (and the later post) ran"
    );
    assert_eq!(nats.count("SLUICE", "sluice.test.counted"), 2);
    for api in [&a_api, &b_api] {
        for id in &replaced_set {
            let v = api.get(&format!("/v1/jobs/{id}")).json();
            assert_eq!(v["state"], "cancelled", "{id}: {v}");
            assert!(
                v["last_error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("replaced by message ")),
                "{id}: {v}"
            );
        }
    }
    let metrics = a_api.get("/metrics").text;
    let b_metrics = b_api.get("/metrics").text;
    let series = "sluice_unique_duplicates_total{outcome=\"replaced\"}";
    let replaced_count = crate::api::metric(&metrics, series).unwrap_or(0.0)
        + crate::api::metric(&b_metrics, series).unwrap_or(0.0);
    assert!(
        (replaced_count - 63.0).abs() < 0.5,
        "{metrics}\n{b_metrics}"
    );
}

/// A holder that has started keeps its key: a replace post is refused
/// naming it (as on the embedded queue), and it runs to its end; then the
/// key is free.
#[test]
fn a_replace_of_a_running_holder_on_jetstream_is_refused() {
    let nats = NatsServer::start();
    let (env, addr) = host(&nats, &["test-spin"], "10s");
    let (daemon, api) = up(&env, &addr);
    let post = replace("test.spin", "long one");
    let r = api.post(&post, "{\"millis\": 3000}");
    assert_eq!(r.status, 202, "{}", r.text);
    let holder = r.json()["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let job = first_job(&r.json());
    // Its host marked the key running.
    assert!(
        wait_until(Duration::from_secs(30), || unique_entries(&nats)
            .iter()
            .any(|v| v.contains(&holder) && v.contains("\"running\":true"))),
        "{:?}\n{}",
        unique_entries(&nats),
        daemon.log_text()
    );
    let refused = api.post(&post, "{\"millis\": 1}");
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert_eq!(refused.json()["duplicate_of"], holder.as_str());
    assert!(reaches(&api, &job, "succeeded"), "{}", daemon.log_text());
    free_again(&api, &post, "{\"millis\": 1}");
}

/// A replace posted right behind its holder, over and over on two hosts:
/// each round, the replace either took the key from the waiting holder
/// (which then never ran), or found it running (refused), or found it
/// released (queued, replacing nothing). The counter's total says which
/// jobs ran: it must be what the answers say, never both of a replaced
/// pair.
#[test]
fn a_replace_racing_the_holders_start_and_release_never_runs_both() {
    let nats = NatsServer::start();
    let ((a, a_addr), (b, b_addr)) = (
        host(&nats, &["test-counter"], "10s"),
        host(&nats, &["test-counter"], "10s"),
    );
    let ((a_host, a_api), (b_host, b_api)) = (up(&a, &a_addr), up(&b, &b_addr));
    let mut expected = 0;
    let mut runs = 0;
    let mut outcomes = BTreeSet::new();
    let mut jobs = Vec::new();
    for round in 0..30 {
        let post = replace("test.counter", &format!("race {round}"));
        // One round in five the holder is delayed 2 s, so it surely waits
        // when the replace comes: a replace is then not left to the
        // race's timing (an idle, fast host may start every plain holder
        // before the other host's post arrives).
        let holder = if round % 5 == 0 {
            format!("{post}&delay=2s")
        } else {
            post.clone()
        };
        let h = a_api.post(&holder, "{\"amount\": 1}");
        assert_eq!(h.status, 202, "{}", h.text);
        let h_job = first_job(&h.json());
        // Later rounds wait a little longer, so every phase of the
        // holder's life is met: waiting, running, released.
        std::thread::sleep(Duration::from_millis(round * 3));
        let p = b_api.post(&post, "{\"amount\": 1000}");
        let v = p.json();
        match p.status {
            202 if v["replaced"] == serde_json::json!([h_job]) => {
                outcomes.insert("replaced");
                expected += 1000;
                runs += 1;
                assert!(reaches(&a_api, &h_job, "cancelled"), "{v}");
            }
            202 => {
                assert_eq!(v["replaced"], serde_json::json!([]), "{v}");
                outcomes.insert("released");
                expected += 1001;
                runs += 2;
            }
            409 => {
                outcomes.insert("running");
                assert_eq!(v["job_ids"], serde_json::json!([h_job]), "{v}");
                expected += 1;
                runs += 1;
            }
            other => panic!("{other}: {v}"),
        }
        jobs.push(h_job);
        if p.status == 202 {
            jobs.push(first_job(&v));
        }
    }
    for id in &jobs {
        assert!(
            wait_until(Duration::from_secs(60), || matches!(
                state_of(&a_api, id).as_str(),
                "succeeded" | "cancelled"
            )),
            "{id}: {}\n{}\n{}",
            state_of(&a_api, id),
            a_host.log_text(),
            b_host.log_text()
        );
    }
    assert_eq!(
        a.state("test-counter", "total"),
        Some(expected.to_string()),
        "{outcomes:?}"
    );
    assert_eq!(nats.count("SLUICE", "sluice.test.counted"), runs);
    assert!(outcomes.contains("replaced"), "{outcomes:?}");
}

/// The holder's host is killed (-9): while the holder waits, a replace on
/// the other host takes its key and it never runs; while it runs, the key
/// stays its own (a replace is refused) until its redelivery on the other
/// host has run it to its end.
#[test]
fn a_holder_whose_host_is_killed_is_replaced_only_while_it_waits() {
    let nats = NatsServer::start();
    let plugins = ["test-counter", "test-spin"];
    let ((a, a_addr), (b, b_addr)) = (host(&nats, &plugins, "3s"), host(&nats, &plugins, "3s"));
    let (a_host, a_api) = up(&a, &a_addr);
    // Waiting: posted to A with its channel paused on both.
    let (b_host, b_api) = up(&b, &b_addr);
    for api in [&a_api, &b_api] {
        assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
    }
    let waiting = a_api.post(&replace("test.counter", "k"), "{\"amount\": 1}");
    assert_eq!(waiting.status, 202, "{}", waiting.text);
    // Running: on A only (B's spin pump paused).
    assert_eq!(b_api.post("/v1/channels/test.spin/pause", "").status, 200);
    let spin = a_api.post(&replace("test.spin", "k"), "{\"millis\": 2000}");
    assert_eq!(spin.status, 202, "{}", spin.text);
    let spinner = spin.json()["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        wait_until(Duration::from_secs(30), || unique_entries(&nats)
            .iter()
            .any(|v| v.contains(&spinner) && v.contains("\"running\":true"))),
        "{}",
        a_host.log_text()
    );
    a_host.kill();
    let p = b_api.post(&replace("test.counter", "k"), "{\"amount\": 100}");
    assert_eq!(p.status, 202, "{}", p.text);
    assert_eq!(
        p.json()["replaced"],
        serde_json::json!([first_job(&waiting.json())])
    );
    let refused = b_api.post(&replace("test.spin", "k"), "{\"millis\": 1}");
    assert_eq!(refused.status, 409, "{}", refused.text);
    for channel in ["test.counter", "test.spin"] {
        let path = format!("/v1/channels/{channel}/resume");
        assert_eq!(b_api.post(&path, "").status, 200);
    }
    assert!(reaches(&b_api, &first_job(&p.json()), "succeeded"));
    assert!(
        reaches(&b_api, &first_job(&spin.json()), "succeeded"),
        "{}",
        b_host.log_text()
    );
    free_again(&b_api, &replace("test.spin", "k"), "{\"millis\": 1}");
    assert_eq!(b.state("test-counter", "total"), Some("100".into()));
    assert_eq!(state_of(&b_api, &first_job(&waiting.json())), "cancelled");
}

/// Any key replaces: dots, spaces, unicode, a line break, 256 bytes; an
/// empty key or one of 257 bytes is refused with the rule.
#[test]
fn replace_takes_any_key_on_jetstream() {
    let nats = NatsServer::start();
    let (env, addr) = host(&nats, &["test-counter"], "10s");
    let (daemon, api) = up(&env, &addr);
    assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
    let long = "é".repeat(128);
    let keys = ["a.b.c", "order 1", "zürich ✓", "two\nlines", &long];
    let mut last = Vec::new();
    for key in keys {
        let first = api.post(&replace("test.counter", key), "{\"amount\": 1}");
        assert_eq!(first.status, 202, "{key:?}: {}", first.text);
        assert_eq!(first.json()["replaced"], serde_json::json!([]), "{key:?}");
        let second = api.post(&replace("test.counter", key), "{\"amount\": 10}");
        assert_eq!(second.status, 202, "{key:?}: {}", second.text);
        assert_eq!(
            second.json()["replaced"],
            serde_json::json!([first_job(&first.json())]),
            "{key:?}"
        );
        last.push(first_job(&second.json()));
    }
    for bad in [String::new(), "k".repeat(257)] {
        let r = api.post(&replace("test.counter", &bad), "{\"amount\": 1}");
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.text.contains("1 to 256 bytes"), "{}", r.text);
    }
    assert_eq!(api.post("/v1/channels/test.counter/resume", "").status, 200);
    for id in &last {
        assert!(reaches(&api, id, "succeeded"), "{}", daemon.log_text());
    }
    assert_eq!(env.state("test-counter", "total"), Some("50".into()));
}

/// A producer's resend of an old message id asking to replace stores
/// nothing (the stream has the id): the waiting holder gets its key back,
/// is not cancelled, and runs.
#[test]
fn a_resent_message_asking_to_replace_gives_the_key_back_on_jetstream() {
    let nats = NatsServer::start();
    let (env, addr) = host(&nats, &["test-counter"], "10s");
    let (daemon, api) = up(&env, &addr);
    let post = replace("test.counter", "resent");
    let as_id = |id: &str, body: &str| {
        let r = api.send(
            "POST",
            &post,
            &[("Idempotency-Key", id)],
            Some(body.as_bytes()),
        );
        (r.status, r.json())
    };
    let (status, n) = as_id("n-1", "{\"amount\": 1}");
    assert_eq!(status, 202, "{n}");
    assert!(
        reaches(&api, &first_job(&n), "succeeded"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(api.post("/v1/channels/test.counter/pause", "").status, 200);
    let (status, m) = as_id("m-1", "{\"amount\": 10}");
    assert_eq!(status, 202, "{m}");
    let (status, again) = as_id("n-1", "{\"amount\": 1}");
    assert_eq!(
        (status, again["duplicate"].as_bool()),
        (202, Some(true)),
        "{again}"
    );
    assert_eq!(again["replaced"], serde_json::json!([]), "{again}");
    // M holds its key still: a reject post names it.
    let r = api.post(
        "/v1/channels/test.counter/messages?unique=resent",
        "{\"amount\": 100}",
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.json()["duplicate_of"], "m-1");
    assert_eq!(api.post("/v1/channels/test.counter/resume", "").status, 200);
    assert!(
        reaches(&api, &first_job(&m), "succeeded"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(env.state("test-counter", "total"), Some("11".into()));
}
