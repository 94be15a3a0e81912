//! Several hosts on one JetStream answer for every job: a host whose record
//! fell behind (the job went on elsewhere) resolves it from the status the
//! other host shared, and a cancel made on any host stops the job wherever
//! it would run.

use std::time::Duration;

use sluice::store::{JobState, job_id_for};

use crate::api::{Api, free_port};
use crate::nats::NatsServer;
use crate::util::{Daemon, Env, wait_until};

/// A retry that waits on the server (a schedule), long enough for the host
/// that recorded it to stop first; and a call that can be long.
const POLICY: &str = "[plugin.test-wire]\nbackoff_initial = \"6s\"\nbackoff_max = \"6s\"\nfuel = 10_000_000_000_000\ntimeout = \"120s\"\n";

fn host(nats: &NatsServer) -> (Env, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::new(
        &["test-wire"],
        &nats.config("10s", &format!("[http]\naddr = \"{addr}\"\n{POLICY}")),
    );
    (env, addr)
}

fn started(env: &Env, addr: &str) -> (Daemon, Api) {
    let daemon = env.start();
    let api = Api::new(addr, None);
    api.wait_up(&daemon);
    (daemon, api)
}

fn state_of(env: &Env, id: &str) -> Option<JobState> {
    env.jobs("test.wire")
        .into_iter()
        .find(|j| j.id == id)
        .map(|j| j.state)
}

fn wait_state(env: &Env, id: &str, state: JobState, daemon: &Daemon) {
    assert!(
        wait_until(Duration::from_secs(60), || state_of(env, id) == Some(state)),
        "job {id}: {:?}, not {state}\n{}",
        state_of(env, id),
        daemon.log_text()
    );
}

fn calls(env: &Env) -> u64 {
    env.state("test-wire", "calls")
        .map_or(0, |c| c.parse().unwrap_or(0))
}

/// Posts through `env`'s CLI; returns the job id of the test-wire handler.
fn post(env: &Env, body: &str) -> String {
    let message = env.ok(&["post", "test.wire", body]);
    job_id_for(message.trim(), "test-wire")
}

/// The handler's consumer has settled its first `n` deliveries and holds
/// nothing else.
fn consumer_settled(nats: &NatsServer, n: u64) -> bool {
    nats.with_js(|js| async move {
        use futures_util::StreamExt;
        let Ok(stream) = js.get_stream("SLUICE").await else {
            return false;
        };
        // The stream's one consumer: test-wire's on test.wire.
        let mut consumers = stream.consumers();
        let Some(Ok(info)) = consumers.next().await else {
            return false;
        };
        info.num_pending == 0 && info.num_ack_pending == 0 && info.ack_floor.consumer_sequence >= n
    })
}

#[test]
fn a_job_another_host_finished_resolves_on_the_host_that_lost_it() {
    let nats = NatsServer::start();
    let ((a, a_addr), (b, b_addr)) = (host(&nats), host(&nats));
    let (a_host, _) = started(&a, &a_addr);
    // Fails once on A: A records `retrying`, the retry waits on the server.
    let id = post(&a, r#"{"fail_times": 1}"#);
    wait_state(&a, &id, JobState::Retrying, &a_host);
    // Once the retry is a schedule on the server, A dies on the spot: a
    // graceful stop could outlast the 6 s backoff under load, and A would
    // run the retry itself (the test then waited for B in vain).
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .count("SLUICE", "sluice-sched.>")
            == 1),
        "the retry is scheduled on the server\n{}",
        a_host.log_text()
    );
    a_host.kill();
    // B takes the retry and finishes the job.
    let (b_host, _) = started(&b, &b_addr);
    wait_state(&b, &id, JobState::Succeeded, &b_host);
    // A, back, answers with B's outcome, and its record catches up.
    let (a_host, a_api) = started(&a, &a_addr);
    let status = a_api.wait_job(&id, Duration::from_secs(30), |r| r.status == 303);
    assert_eq!(
        status.location.as_deref(),
        Some(format!("/v1/jobs/{id}/result").as_str())
    );
    wait_state(&a, &id, JobState::Succeeded, &a_host);
    assert_eq!(
        calls(&a),
        1,
        "it ran to success once (one store for both hosts)"
    );
}

#[test]
fn a_cancel_on_one_host_stops_the_job_on_every_host() {
    let nats = NatsServer::start();
    let ((a, a_addr), (b, b_addr)) = (host(&nats), host(&nats));

    // 1. Waiting on A (a retry on the server), cancelled on A: B, which
    //    receives the retry later, must not run it.
    let (a_host, a_api) = started(&a, &a_addr);
    let waiting = post(&a, r#"{"fail_times": 1}"#);
    wait_state(&a, &waiting, JobState::Retrying, &a_host);
    let cancel = a_api.delete(&format!("/v1/jobs/{waiting}"));
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    a_host.stop(Duration::from_secs(30));
    // The retry fires while no host runs: B's first pull finds it at once,
    // so B must have applied A's cancel before its pumps start.
    assert!(
        wait_until(Duration::from_secs(30), || nats
            .count("SLUICE", "sluice-sched.>")
            == 0),
        "the retry fired"
    );
    let (b_host, b_api) = started(&b, &b_addr);
    wait_state(&b, &waiting, JobState::Cancelled, &b_host);
    assert!(
        // The message (to A), then the retry (to B).
        wait_until(Duration::from_secs(60), || consumer_settled(&nats, 2)),
        "the retry fired and was settled\n{}",
        b_host.log_text()
    );
    assert_eq!(state_of(&b, &waiting), Some(JobState::Cancelled));
    assert_eq!(calls(&b), 0, "B never ran the cancelled job");

    // 2. Running on B, cancelled through A (which never saw it): B
    //    interrupts the call and records it cancelled; A reports it.
    let (a_host, a_api) = started(&a, &a_addr);
    a_host.signal("STOP"); // A takes no delivery of it
    let running = post(&b, r#"{"spin_ms": 100000}"#);
    wait_state(&b, &running, JobState::Running, &b_host);
    a_host.signal("CONT");
    let shared = wait_until(Duration::from_secs(30), || {
        b_api.get(&format!("/v1/jobs/{running}")).status == 200
            && a_api.get(&format!("/v1/jobs/{running}")).status == 200
    });
    assert!(shared, "A sees B's job through the status board");
    let cancel = a_api.delete(&format!("/v1/jobs/{running}"));
    assert_eq!(cancel.status, 202, "{}", cancel.text);
    wait_state(&b, &running, JobState::Cancelled, &b_host);
    a_api.wait_job(&running, Duration::from_secs(30), |r| {
        r.json()["state"] == "cancelled"
    });
    assert_eq!(calls(&b), 0);
}

/// A job's status as a host would share it.
fn view(id: &str, state: JobState, updated_at: i64) -> sluice::api::JobView {
    serde_json::from_value(serde_json::json!({
        "id": id, "message_id": "m", "channel": "test.wire", "handler": "test-wire",
        "kind": "command", "state": state.as_str(), "attempts": 1, "slices": 1,
        "progress": null, "progress_note": null, "estimate_ms": null, "has_result": false,
        "last_error": null, "plugin_version": null, "fuel_used": 0, "replays": 0,
        "created_at": 1, "started_at": 1, "finished_at": null, "updated_at": updated_at,
        "visible_at": 1, "expires_at": null
    }))
    .expect("a job view")
}

/// The status board as host number `n` of this test opens it.
async fn board(nats: &NatsServer, dir: &std::path::Path, n: usize) -> sluice::cluster::StatusBoard {
    let store = sluice::store::Store::open(&dir.join(format!("host-{n}.db")), &Default::default())
        .expect("store");
    let settings = sluice::transport::JetStreamSettings {
        url: nats.url(),
        ..Default::default()
    };
    let js = sluice::transport::JetStream::connect(settings, store)
        .await
        .expect("connect");
    sluice::cluster::StatusBoard::open(&js, 1, Duration::from_secs(3600))
        .await
        .expect("board")
}

/// The interleaving behind the fault test's "host 0: f9-3 is scheduled":
/// host A reads the board (no entry yet: A's first write of that job),
/// host C shares `succeeded`, then A writes the `scheduled` it had just
/// recorded (a slice A ran, the job went on on C). A blind write there left
/// `scheduled` on the board for good, and A's reconciler, reading a
/// non-final status, never resolved A's record. The write is conditional on
/// what A read: it is refused, and A's next try keeps C's final status.
#[test]
fn a_status_shared_between_a_hosts_read_and_its_write_is_not_overwritten() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (a, c) = (
            board(&nats, dir.path(), 0).await,
            board(&nats, dir.path(), 1).await,
        );
        let id = "0b9f6c1e-0000-4000-8000-000000000001";
        let seen = a.seen(id).await.expect("read");
        c.put(view(id, JobState::Succeeded, 20))
            .await
            .expect("C shares");
        let raced = a.put_over(&seen, view(id, JobState::Scheduled, 30)).await;
        assert!(
            matches!(raced, Err(sluice::cluster::Refused::Raced)),
            "A's write over a stale read: {raced:?}"
        );
        a.put(view(id, JobState::Scheduled, 30))
            .await
            .expect("A shares again");
        let held = c.get(id).await.expect("an entry");
        assert_eq!(held.state, JobState::Succeeded, "C's final status stays");

        // The same over an entry that existed: A read C's `running`, C
        // then shared `succeeded`.
        let id = "0b9f6c1e-0000-4000-8000-000000000002";
        c.put(view(id, JobState::Running, 10))
            .await
            .expect("C shares");
        let seen = a.seen(id).await.expect("read");
        c.put(view(id, JobState::Succeeded, 20))
            .await
            .expect("C shares");
        let raced = a.put_over(&seen, view(id, JobState::Queued, 30)).await;
        assert!(
            matches!(raced, Err(sluice::cluster::Refused::Raced)),
            "{raced:?}"
        );
        a.put(view(id, JobState::Queued, 30))
            .await
            .expect("A shares again");
        assert_eq!(c.get(id).await.map(|v| v.state), Some(JobState::Succeeded));
    });
}

/// A delayed post is a job from the moment it is posted, not only once it
/// is due: the host it was posted through lists it and answers for it as
/// `scheduled`, the other hosts answer from the status board, and a cancel
/// made on any host before it is due keeps it from ever running.
#[test]
fn a_delayed_post_is_listed_answered_and_cancellable_before_it_is_due() {
    let nats = NatsServer::start();
    let ((a, a_addr), (b, b_addr)) = (host(&nats), host(&nats));
    let (a_host, a_api) = started(&a, &a_addr);
    let (b_host, b_api) = started(&b, &b_addr);

    // Through A's API, due in 10 s (time enough to cancel it first).
    let posted = a_api.post("/v1/channels/test.wire/messages?delay=10s", "{}");
    assert_eq!(posted.status, 202, "{}", posted.text);
    let id = posted.json()["job_ids"][0]
        .as_str()
        .expect("job id")
        .to_owned();
    assert_eq!(state_of(&a, &id), Some(JobState::Scheduled), "A lists it");
    let on_a = a_api.get(&format!("/v1/jobs/{id}"));
    assert_eq!(on_a.status, 200, "{}", on_a.text);
    assert_eq!(on_a.json()["state"], "scheduled");
    assert!(
        wait_until(Duration::from_secs(30), || b_api
            .get(&format!("/v1/jobs/{id}"))
            .status
            == 200),
        "B answers for it from the status board\n{}",
        a_host.log_text()
    );
    // Cancelled through B, which never had it.
    let cancel = b_api.delete(&format!("/v1/jobs/{id}"));
    assert_eq!(cancel.status, 202, "{}", cancel.text);
    wait_state(&a, &id, JobState::Cancelled, &a_host);
    wait_state(&b, &id, JobState::Cancelled, &b_host);
    // It falls due, is delivered, and runs nowhere.
    assert!(
        wait_until(Duration::from_secs(60), || consumer_settled(&nats, 1)),
        "the message fired and was settled\n{}",
        a_host.log_text()
    );
    assert_eq!(calls(&a) + calls(&b), 0, "the cancelled job never ran");

    // Through A's CLI: listed on A at once.
    let message = a.ok(&["post", "test.wire", "{}", "--delay", "1h"]);
    let id = job_id_for(message.trim(), "test-wire");
    assert_eq!(state_of(&a, &id), Some(JobState::Scheduled));
}

/// Every host runs up to its own `concurrency` of a handler whose consumer
/// it shares: two hosts with `concurrency = 2` run four long jobs at once.
/// The consumer's `max_ack_pending` was one host's concurrency, shared by
/// all of them: adding hosts added no capacity, and a host whose pull found
/// the others holding every slot got `409 Exceeded MaxAckPending`, logged a
/// failed fetch and slept.
#[test]
fn each_host_runs_its_own_concurrency_of_a_shared_consumer() {
    let nats = NatsServer::start();
    let config = nats.config("30s", "concurrency = 2\n");
    let a = Env::new(&["test-spin"], &config);
    let b = Env::new(&["test-spin"], &config);
    let da = a.start();
    let db = b.start();
    for _ in 0..4 {
        a.ok(&["post", "test.spin", r#"{"millis": 6000}"#]);
    }
    let running = |env: &Env| {
        env.jobs("test.spin")
            .iter()
            .filter(|j| j.state == JobState::Running)
            .count()
    };
    let mut seen = 0;
    assert!(
        wait_until(Duration::from_secs(60), || {
            seen = seen.max(running(&a) + running(&b));
            seen == 4
        }),
        "at most {seen} of 4 jobs ran at once on two hosts of concurrency 2\nA:\n{}\nB:\n{}",
        da.log_text(),
        db.log_text()
    );
    for (env, daemon) in [(&a, &da), (&b, &db)] {
        assert!(
            wait_until(Duration::from_secs(60), || running(env) == 0),
            "{}",
            daemon.log_text()
        );
        assert!(
            !daemon.log_text().contains("fetch failed"),
            "{}",
            daemon.log_text()
        );
    }
}

/// The handler's consumer (test-wire's on test.wire) has settled its
/// first `n` deliveries and holds nothing else, whatever other consumers
/// the stream has.
fn wire_consumer_settled(nats: &NatsServer, n: u64) -> bool {
    nats.with_js(|js| async move {
        use futures_util::StreamExt;
        let Ok(stream) = js.get_stream("SLUICE").await else {
            return false;
        };
        let mut consumers = stream.consumers();
        while let Some(Ok(info)) = consumers.next().await {
            if info.name.starts_with("test-wire__") {
                return info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.ack_floor.consumer_sequence >= n;
            }
        }
        false
    })
}

#[test]
fn a_cancel_made_before_any_host_has_the_job_drops_it_when_it_arrives() {
    let nats = NatsServer::start();
    // A runs no handler of test.wire: its message waits in the stream,
    // recorded by no host.
    let a_addr = format!("127.0.0.1:{}", free_port());
    let a = Env::new(
        &["test-counter"],
        &nats.config("10s", &format!("[http]\naddr = \"{a_addr}\"\n")),
    );
    let (a_host, a_api) = started(&a, &a_addr);
    a.ok(&["post", "test.wire", r#"{"spin_ms": 1}"#, "--id", "early-1"]);
    let id = job_id_for("early-1", "test-wire");
    let cancel = a_api.delete(&format!("/v1/jobs/{id}"));
    assert_eq!(cancel.status, 202, "{}", cancel.text);
    assert_eq!(cancel.json()["state"], "cancelled", "{}", cancel.text);
    // A typo waits for nothing.
    let typo = a_api.delete("/v1/jobs/not-a-job");
    assert_eq!(typo.status, 404, "{}", typo.text);

    // B, which runs test-wire, starts later: its message is dropped unrun.
    let (b, b_addr) = host(&nats);
    let (b_host, _b_api) = started(&b, &b_addr);
    assert!(
        wait_until(Duration::from_secs(60), || wire_consumer_settled(&nats, 1)),
        "the message was settled\n{}",
        b_host.log_text()
    );
    let job = b.job(&id);
    assert_eq!(job.state, JobState::Cancelled, "{}", b_host.log_text());
    assert_eq!(
        (job.message_id.as_str(), job.channel.as_str()),
        ("early-1", "test.wire"),
        "the record learned its message"
    );
    assert_eq!(calls(&b), 0, "B never ran the cancelled job");
    drop(a_host);
}

/// A host whose commit got no answer (its nats-server killed while the job
/// ran, shared state on) leaves the delivery to come back; when another
/// host runs the job, the first host's record and API take that outcome
/// instead of answering `running` for good.
#[test]
fn a_job_whose_outcome_was_lost_here_resolves_when_another_host_runs_it() {
    let mut nats = NatsServer::start();
    let shared = |nats: &NatsServer| {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = nats.config("4s", &format!("[http]\naddr = \"{addr}\"\n{POLICY}"));
        (
            Env::new(&["test-wire"], &format!("{config}shared_state = true\n")),
            addr,
        )
    };
    let (a, a_addr) = shared(&nats);
    let (a_host, a_api) = started(&a, &a_addr);
    // A first job leaves the state key in A's ledger, so the next call
    // reads it from memory and meets the dead server only when it commits.
    let first = post(&a, "{}");
    wait_state(&a, &first, JobState::Succeeded, &a_host);
    let id = post(&a, r#"{"spin_ms": 3000}"#);
    wait_state(&a, &id, JobState::Running, &a_host);
    // Time for the delivery's marker lookup to be answered first; if it
    // is not, the run ends as a host fault (handed back) instead, which
    // must resolve the same way.
    std::thread::sleep(Duration::from_millis(500));
    nats.kill();
    assert!(
        wait_until(Duration::from_secs(60), || {
            !a_host.log_lines(&["cannot record job outcome"]).is_empty()
                || !a_host.log_lines(&["outcome=\"host fault\""]).is_empty()
        }),
        "{}",
        a_host.log_text()
    );
    // B, not A, gets the delivery when it comes back.
    a_host.signal("STOP");
    nats.start_again();
    let (b, b_addr) = shared(&nats);
    let (b_host, _b_api) = started(&b, &b_addr);
    wait_state(&b, &id, JobState::Succeeded, &b_host);
    a_host.signal("CONT");
    wait_state(&a, &id, JobState::Succeeded, &a_host);
    a_api.wait_job(&id, Duration::from_secs(30), |r| {
        r.json()["state"] == "succeeded"
    });
}
