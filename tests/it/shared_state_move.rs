//! Shared state is on by default on JetStream: a host that kept its
//! plugins' state in its own SQLite (an older version, or `shared_state =
//! false`) moves it into the shared store at its next start, once; a key
//! the shared store has already keeps the shared value.

use std::time::Duration;

use crate::nats::NatsServer;
use crate::shared_state::{shared_value, wait_running};
use crate::util::Env;

const CHANNEL: &str = "test.state";

fn config(nats: &NatsServer, shared: bool) -> String {
    format!(
        "{}shared_state = {shared}\n",
        nats.config("3s", "[plugin.test-state]\nconcurrency = 4\n")
    )
}

#[test]
fn a_hosts_own_state_moves_to_the_shared_store_once_and_a_shared_key_wins() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-state"], &config(&nats, false));
    let host = env.start();
    wait_running(&[&host]);
    let lines = "{\"key\": \"a\"}\n{\"key\": \"a\"}\n{\"key\": \"b\"}\n{\"key\": \"c d/é\"}\n";
    let out = env.sluice_stdin(&["post", CHANNEL], lines);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.wait_settled(CHANNEL, 4, Duration::from_secs(60));
    host.stop(Duration::from_secs(10));
    assert_eq!(env.local_state("test-state", "a"), Some("2".into()));
    // Another host shares state already and has its own `b`.
    nats.with_js(|js| async move {
        let stream = async_nats::jetstream::stream::Config {
            name: "SLUICE_STATE".into(),
            subjects: vec!["sluice-state.>".into()],
            max_messages_per_subject: 1,
            allow_direct: true,
            allow_atomic_publish: true,
            allow_message_ttl: true,
            ..Default::default()
        };
        js.get_or_create_stream(stream).await.expect("stream");
        js.publish("sluice-state.k.test-state.vb", "40".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
    std::fs::write(&env.config, config(&nats, true)).expect("config");
    let host = env.start();
    wait_running(&[&host]);
    let log = host.log_text();
    assert!(log.contains("moved this host's state"), "{log}");
    assert!(
        log.contains("already in the shared store") && log.contains("key=b"),
        "names the key it dropped\n{log}"
    );
    assert_eq!(shared_value(&nats, "a"), Some("2".into()), "moved");
    assert_eq!(
        shared_value(&nats, "b"),
        Some("40".into()),
        "the shared one kept"
    );
    // A key that is no single token moved too (its subject is encoded).
    assert_eq!(env.state("test-state", "c d/é"), Some("1".into()));
    // The jobs go on from the moved value.
    env.ok(&["post", CHANNEL, r#"{"key": "a"}"#]);
    env.wait_settled(CHANNEL, 5, Duration::from_secs(60));
    assert_eq!(shared_value(&nats, "a"), Some("3".into()));
    host.stop(Duration::from_secs(10));
    // Once: a restart moves nothing again (it would be kept anyway, but
    // a key deleted in the shared store must not come back).
    let host = env.start();
    wait_running(&[&host]);
    assert!(
        !host.log_text().contains("moved this host's state"),
        "{}",
        host.log_text()
    );
    assert_eq!(shared_value(&nats, "a"), Some("3".into()));
}
