//! Dead-letter replay on JetStream: the replay and the message that carries
//! it commit together (through the outbox), so a publish that fails at that
//! moment loses nothing; and the body goes back byte for byte, binary too.
//! A dead letter whose copy to `SLUICE_DLQ` failed is copied when its
//! message comes back, once.

use std::time::Duration;

use sluice::store::JobState;

use crate::api::{Api, free_port};
use crate::nats::NatsServer;
use crate::util::{Daemon, Env, wait_until};

/// Not UTF-8, not JSON: the JSON passthrough refuses it, so it is dead at
/// once, every time.
const BODY: &[u8] = &[0xff, 0xfe, 0x00, 0x80, b'\n', 0xc3, 0x28];

/// How long a dead letter may take to reach `SLUICE_DLQ` at most.
const COPIED: Duration = Duration::from_secs(120);

fn dead_letters(nats: &NatsServer) -> Vec<Vec<u8>> {
    nats.messages("SLUICE_DLQ")
        .into_iter()
        .map(|m| m.payload.to_vec())
        .collect()
}

fn wait_dead(env: &Env, replays: u32, host: &Daemon) -> String {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(60), || {
        last = env.jobs("test.wire").into_iter().next();
        last.as_ref()
            .is_some_and(|j| j.state == JobState::Dead && j.replays == replays)
    });
    assert!(ok, "{last:?}\n{}", host.log_text());
    last.map(|j| j.id).unwrap_or_default()
}

#[test]
fn a_replay_survives_a_failed_publish_and_keeps_a_binary_body() {
    let mut nats = NatsServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::new(
        &["test-wire"],
        &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n")),
    );
    let host = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&host);
    // A producer in any language publishes raw bytes.
    nats.with_js(|js| async move {
        js.publish("sluice.test.wire", BODY.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    });
    let id = wait_dead(&env, 0, &host);

    // Replayed while the server is down: the replay commits with its
    // message, which goes out once the server is back.
    nats.kill();
    let replay = api.post(&format!("/v1/dead-letters/{id}/replay"), "");
    assert_eq!(replay.status, 200, "{}", replay.text);
    nats.start_again();
    wait_dead(&env, 1, &host);
    // The copy may fail right after the restart (CI, on a loaded box: the
    // publish timed out); its message is then asked back within seconds
    // (`copy_again_soon`) and copied then, however long the ack wait.
    // The bound is for a box that stalls, not a measure of that.
    assert!(
        wait_until(COPIED, || dead_letters(&nats).len() == 2),
        "{}",
        host.log_text()
    );

    // From the CLI with no daemon running: it publishes the replay itself.
    host.stop(Duration::from_secs(30));
    env.ok(&["dlq", "replay", &id, "--nats", &nats.url()]);
    let host = env.start();
    wait_dead(&env, 2, &host);
    assert!(
        wait_until(COPIED, || dead_letters(&nats).len() == 3),
        "{}",
        host.log_text()
    );
    for payload in dead_letters(&nats) {
        assert_eq!(payload, BODY, "the body went round byte for byte");
    }
}

/// Sets `SLUICE_DLQ` to refuse every new message (`refuse`) or to take them
/// again: a server-side refusal, the way a full stream or a server still
/// recovering after a restart answers.
fn dlq_refuses(nats: &NatsServer, refuse: bool) {
    nats.with_js(|js| async move {
        use async_nats::jetstream::stream::DiscardPolicy;
        let mut stream = js.get_stream("SLUICE_DLQ").await.expect("dlq stream");
        let mut config = stream.info().await.expect("dlq info").config.clone();
        if refuse {
            // One message there already, and room for no more.
            js.publish("sluice-dlq.filler", "filler".into())
                .await
                .expect("publish filler")
                .await
                .expect("filler stored");
            config.max_messages = 1;
            config.discard = DiscardPolicy::New;
        } else {
            config.max_messages = -1;
        }
        js.update_stream(config).await.expect("update dlq");
    });
}

/// Every delivery of the handler's consumer settled (acked or termed).
fn consumer_idle(nats: &NatsServer) -> bool {
    nats.with_js(|js| async move {
        use futures_util::StreamExt;
        let Ok(stream) = js.get_stream("SLUICE").await else {
            return false;
        };
        let mut consumers = stream.consumers();
        let Some(Ok(info)) = consumers.next().await else {
            return false;
        };
        info.num_pending == 0 && info.num_ack_pending == 0
    })
}

/// A dead letter whose copy `SLUICE_DLQ` refused: recorded dead, not
/// copied and not given up while the refusal lasts, then copied once the
/// stream takes messages again (within `within`, whatever `ack_wait`
/// says), and termed: one copy, byte for byte.
fn a_refused_dead_letter_arrives_once(ack_wait: &str, within: Duration) {
    let nats = NatsServer::start();
    let env = Env::new(&["test-wire"], &nats.config(ack_wait, ""));
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(30));
    dlq_refuses(&nats, true);
    nats.with_js(|js| async move {
        js.publish("sluice.test.wire", BODY.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    });
    // Recorded dead here, but its copy to the dead letters was refused.
    wait_dead(&env, 0, &host);
    host.wait_log(&["settle failed"], 1, Duration::from_secs(30));
    // Delivered again while the refusal lasts: still no copy, and not
    // given up either.
    host.wait_log(&["dead letter not copied yet"], 1, within);
    dlq_refuses(&nats, false);
    let letters = || nats.count("SLUICE_DLQ", "sluice-dlq.test.wire");
    assert!(
        wait_until(within, || letters() == 1),
        "the dead letter never reached SLUICE_DLQ within {within:?} (ack wait {ack_wait})\n{}",
        host.log_text()
    );
    // Termed once it is there: nothing left to deliver, and one copy.
    assert!(
        wait_until(Duration::from_secs(30), || consumer_idle(&nats)),
        "{}",
        host.log_text()
    );
    assert_eq!(letters(), 1, "{}", host.log_text());
    assert_eq!(dead_letters(&nats).last().map(Vec::as_slice), Some(BODY));
}

#[test]
fn a_dead_letter_the_dead_letter_stream_refused_arrives_once_it_takes_it() {
    a_refused_dead_letter_arrives_once("2s", Duration::from_secs(60));
}

/// A dead letter whose copy failed comes back within seconds, not an ack
/// wait later: with a ten-minute ack wait, it still reaches `SLUICE_DLQ`
/// soon after the stream takes messages again (it used to wait out the
/// ack wait; after a server restart, in CI, that was longer than the test
/// waited).
#[test]
fn a_dead_letter_whose_copy_failed_is_copied_again_soon_whatever_the_ack_wait() {
    a_refused_dead_letter_arrives_once("10m", Duration::from_secs(60));
}

/// Review2 #2: a replay that reaches a host whose record of the job is
/// final from the earlier life must start the new life there. It used to be
/// taken for a redelivery of what that host had finished, acked, and lost
/// (the replaying host's record stayed `queued` for ever).
///
/// Host B runs attempt 1 and is killed with the retry scheduled; host A
/// runs attempt 2 and dead-letters the job; B, started again, learns from
/// the status board that its record is dead. A is stopped and the job is
/// replayed from A's store by the CLI, so only B can take the replay.
#[test]
fn a_replay_reaches_a_host_whose_record_of_the_job_is_final() {
    let nats = NatsServer::start();
    let policy = "[plugin.test-wire]\nmax_attempts = 2\nbreaker_failures = 0\n\
                  backoff_initial = \"8s\"\nbackoff_max = \"8s\"\n";
    let a = Env::new(&["test-wire"], &nats.config("10s", policy));
    let b = Env::new(&["test-wire"], &nats.config("10s", policy));
    let job = |env: &Env| env.jobs("test.wire").into_iter().next();
    let wait_job =
        |env: &Env, host: &Daemon, what: &str, f: &dyn Fn(&sluice::store::JobRecord) -> bool| {
            let mut last = None;
            let ok = wait_until(Duration::from_secs(60), || {
                last = job(env);
                last.as_ref().is_some_and(f)
            });
            assert!(ok, "{what}: {last:?}\n{}", host.log_text());
        };

    let host_b = b.start();
    host_b.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    b.post("test.wire", r#"{"fail_times": 99}"#);
    wait_job(&b, &host_b, "B retrying", &|j| {
        j.state == JobState::Retrying
    });
    // The retry is a schedule on the server before B goes.
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .messages("SLUICE")
            .iter()
            .any(|m| m.subject.starts_with("sluice-sched."))),
        "{}",
        host_b.log_text()
    );
    host_b.kill();

    let host_a = a.start();
    wait_job(&a, &host_a, "A dead", &|j| {
        j.state == JobState::Dead && j.attempts == 2
    });
    let host_b = b.start();
    wait_job(&b, &host_b, "B's record resolved", &|j| {
        j.state == JobState::Dead
    });
    host_a.stop(Duration::from_secs(30));

    let id = job(&a).map(|j| j.id).unwrap_or_default();
    a.ok(&["dlq", "replay", &id, "--nats", &nats.url()]);
    wait_job(&b, &host_b, "the replay ran on B", &|j| {
        j.state == JobState::Dead && j.replays == 1 && j.attempts == 2
    });
    assert!(
        wait_until(Duration::from_secs(30), || dead_letters(&nats).len() == 2),
        "one dead letter per life\n{}",
        host_b.log_text()
    );
}
