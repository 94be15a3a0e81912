//! Debounce: 20 posts of one key within the window make one run, with the
//! last body (embedded, and JetStream through the server's schedules).

use std::time::Duration;

use crate::api::{Api, free_port, http_config};
use crate::nats::NatsServer;
use crate::util::{Env, wait_until};

const POST: &str = "/v1/channels/test.counter/messages?debounce=sync%20a&debounce_for=3s";

/// 20 posts, amounts 1..=20; the job id(s) each was answered with.
fn burst(api: &Api) -> Vec<String> {
    (1..=20)
        .map(|i| {
            let r = api.post(POST, &format!("{{\"amount\": {i}}}"));
            assert_eq!(r.status, 202, "{}", r.text);
            r.json()["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn twenty_posts_in_the_window_run_once_with_the_last_body() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let ids = burst(&api);
    // Every post became the first one's waiting message.
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let jobs = env.wait_settled("test.counter", 1, Duration::from_secs(60));
    assert_eq!(
        env.state("test-counter", "total"),
        Some("20".into()),
        "{jobs:?}"
    );
    // A post after the run starts a window of its own.
    let r = api.post(POST, "{\"amount\": 5}");
    assert_eq!(r.status, 202, "{}", r.text);
    env.wait_settled("test.counter", 2, Duration::from_secs(60));
    assert_eq!(env.state("test-counter", "total"), Some("25".into()));
    daemon.stop(Duration::from_secs(30));
}

#[test]
fn twenty_posts_in_the_window_run_once_with_the_last_body_on_jetstream() {
    let nats = NatsServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::new(
        &["test-counter"],
        &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n")),
    );
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    burst(&api);
    assert!(
        wait_until(Duration::from_secs(60), || env
            .state("test-counter", "total")
            .is_some()),
        "{}",
        daemon.log_text()
    );
    // Give a second (wrong) fire time to show up: the window and more.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        env.state("test-counter", "total"),
        Some("20".into()),
        "{}",
        daemon.log_text()
    );
    let fired = nats
        .messages("SLUICE")
        .into_iter()
        .filter(|m| m.subject.as_str() == "sluice.test.counter")
        .count();
    assert_eq!(fired, 1);
    // A window or delay past what the stream keeps (max_age, 7 days) is
    // refused: accepted, its schedule would be dropped before it fired.
    for query in [
        "debounce=k&delay=10d",
        "debounce=k&debounce_for=1d&delay=6d23h59m30s",
    ] {
        let r = api.post(&format!("/v1/channels/test.counter/messages?{query}"), "{}");
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert!(
            r.text.contains("longer than the stream keeps"),
            "{}",
            r.text
        );
    }
    let out = env.sluice(&[
        "post",
        "test.counter",
        "{}",
        "--debounce",
        "k",
        "--delay",
        "30d",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("longer than the stream keeps"),
        "{stderr}"
    );
}
