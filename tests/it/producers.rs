//! A producer in another language (Python, nats-py) publishing to Sluice
//! the way the README's producer guide says: a plain `js.publish` with no
//! headers, one with `Sluice-Id`, one with `Nats-Msg-Id`, an event, and a
//! delayed one. Each is a normal job; a re-publish of the same id runs
//! nothing twice.

use std::process::Command;
use std::time::Duration;

use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::util::{Env, repo_root, wait_until};

const SCRIPT: &str = r#"
import asyncio, sys, time
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    js = nc.jetstream()
    await js.publish("sluice.test.wire", b'{}')
    await js.publish("sluice.test.wire", b'{}', headers={"Sluice-Id": "py-1"})
    await js.publish("sluice.test.wire", b'{}', headers={"Sluice-Id": "py-1"})
    await js.publish("sluice.test.wire", b'{}', headers={"Nats-Msg-Id": "py-2"})
    await js.publish("sluice.test.wire", b'{}',
                     headers={"Sluice-Id": "py-3", "Sluice-Kind": "event", "trace-id": "abc"})
    due = int(time.time() * 1000) + 3000
    await js.publish("sluice.test.wire", b'{}',
                     headers={"Sluice-Id": "py-late", "Sluice-Not-Before": str(due)})
    print(due)
    await nc.close()

asyncio.run(main())
"#;

/// The venv scripts/test makes (with nats-py in it).
fn python() -> std::path::PathBuf {
    let venv = repo_root().join("target/nats-venv/bin/python");
    assert!(
        venv.exists(),
        "no {}: run scripts/test once (it installs nats-py there)",
        venv.display()
    );
    venv
}

#[test]
fn a_python_producer_publishes_plain_jetstream_messages_that_run_once() {
    let nats = NatsServer::start();
    let env = Env::new(&["test-wire"], &nats.config("10s", ""));
    let host = env.start();
    host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    let out = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(nats.url())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "nats-py producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let due: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("due time");
    let done = || {
        env.jobs("test.wire")
            .into_iter()
            .filter(|j| j.state == JobState::Succeeded)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(60), || done().len() == 5),
        "{:?}\n{}",
        env.jobs("test.wire"),
        host.log_text()
    );
    let jobs = done();
    let ids: Vec<&str> = jobs.iter().map(|j| j.message_id.as_str()).collect();
    for id in ["py-1", "py-2", "py-3", "py-late"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    // The plain publish took its id from the stream sequence.
    assert!(ids.iter().any(|id| id.starts_with("nats-")), "{ids:?}");
    // py-1 was published twice and ran once; the late one not before due.
    assert_eq!(env.jobs("test.wire").len(), 5);
    let late = jobs
        .iter()
        .find(|j| j.message_id == "py-late")
        .expect("late");
    assert!(late.started_at.is_some_and(|t| t >= due), "{late:?}");
    let event = jobs.iter().find(|j| j.message_id == "py-3").expect("event");
    assert_eq!(event.kind, "event");
    assert!(nats.count("SLUICE_DLQ", "sluice-dlq.>") == 0);
}
