//! `sluice bench` runs end to end on the embedded queue and prints its
//! report. Figures are not asserted (they depend on the machine); that the
//! run completed every job, checked the workload's sums and printed each
//! line is, and so is a failed check failing the command. The traced drain
//! must deliver every span to the bench's OTLP receiver, and the dashboard
//! pages must answer on a generated store.

use crate::util::{Env, built_plugins};

#[test]
fn bench_runs_on_the_embedded_queue_and_prints_its_report() {
    let env = Env::new(&["bench-amounts", "test-version-1", "test-version-2"], "");
    let out = env.ok(&[
        "bench",
        "--messages",
        "200",
        "--runs",
        "1",
        "--transport",
        "embedded",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--sandbox-calls",
        "50",
        "--swaps",
        "1",
        "--dashboard-jobs",
        "3000",
    ]);
    for line in [
        "sluice bench: bench-amounts 0.1.0 on bench.amounts",
        "[embedded]   enqueue   200 msgs",
        "[embedded]   drain     200 jobs",
        "[embedded]   latency   post->handled p50",
        // 0 + 1 + ... + 99, twice.
        "[embedded]   jobs      200 of 200 succeeded in SQLite, amounts add up to 9900,",
        "[embedded]   steady    200 msgs/s offered",
        "[embedded]   rss       peak",
        "[embedded]   post      sluice post < 200 lines in",
        "[baseline]   sandbox   instantiate+call+drop p50",
        "[baseline]   native    same work as a Rust call p50",
        "[reload]     swap      file written -> new version serving, 1 swaps",
        // The traced twin of the drain: every span reached the receiver.
        "[traced]     drain     200 jobs",
        "[traced]     jobs      200 of 200 succeeded in SQLite",
        "[traced]     spans     1200 of 1200 received by the OTLP receiver (6 per job)\n",
        "| embedded drain, [otel] on: spans over OTLP (median of 1) |",
        "[pages]      store     3000 jobs filled in",
        "[pages]      job           GET /v1/dashboard/jobs/job-00001500 p50",
        "[pages]      dead letters  GET /v1/dead-letters?limit=50 p50",
        "| dashboard overview: GET /v1/dashboard/overview?minutes=15 with 3,000 jobs (p50) |",
        "| figure | measured | baseline (same run) | ratio | target | |",
        "| embedded drain (median of 1) |",
        "| embedded p99 post->handled at 200 msgs/s |",
        "| embedded `sluice post` from stdin |",
        "| sandbox, instantiate+call+drop p50 |",
        "| peak RSS over the host runs |",
        "checks: every run handled every message exactly once",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}

#[test]
fn bench_fails_when_not_every_message_succeeds() {
    let env = Env::new(&["bench-amounts"], "");
    // bench-amounts rejects `{}` for good: every job is a dead letter.
    let out = env.sluice(&[
        "bench",
        "--body",
        "{}",
        "--messages",
        "20",
        "--runs",
        "1",
        "--transport",
        "embedded",
        "--rate",
        "0",
        "--sandbox-calls",
        "0",
        "--swaps",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bench passed:\n{stderr}");
    assert!(
        stderr.contains("checks failed: embedded: 0 of 20 jobs succeeded"),
        "{stderr}"
    );
}

#[test]
fn bench_state_modes_print_their_ratio_to_the_stateless_run_and_reruns() {
    let env = Env::new(&[], "");
    let plugin = built_plugins().join("test-state.wasm");
    let out = env.ok(&[
        "bench",
        "--state",
        "hot,spread,add",
        "--plugin",
        plugin.to_str().expect("utf-8 path"),
        "--messages",
        "300",
        "--runs",
        "1",
        "--transport",
        "embedded",
    ]);
    for line in [
        "[embedded:none] jobs      300 of 300 succeeded in SQLite",
        "[embedded:hot] jobs      300 of 300 succeeded in SQLite",
        "[embedded:hot] state     ",
        "[embedded:hot] totals    key \"hot\" = 300: exact",
        "[embedded:add] totals    key \"hot\" = 300: exact",
        "[embedded:spread] totals    300 keys, each = 1: exact",
        "[embedded:spread] state     ",
        "[embedded:add] state     ",
        "| embedded drain, state hot (get + set, one key) (median of 1) |",
        "checks: every run handled every message exactly once",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}

/// Issue 17: `--hosts 3` runs each state mode on JetStream on one host and
/// on three competing hosts, shared state off and on, checks each run's
/// totals where the state lives (the shared store, or the hosts' SQLite
/// added up) and prints the ratios.
#[test]
fn bench_state_on_three_hosts_compares_shared_state_with_one_host() {
    // On a nats-server of its own (nats-server from PATH).
    let env = Env::new(&[], "");
    let plugin = built_plugins().join("test-state.wasm");
    let out = env.ok(&[
        "bench",
        "--state",
        "hot,spread",
        "--hosts",
        "3",
        "--plugin",
        plugin.to_str().expect("utf-8 path"),
        "--messages",
        "40",
        "--runs",
        "1",
        "--transport",
        "jetstream",
    ]);
    for line in [
        "[none:3h:shared] jobs      40 of 40 succeeded in SQLite",
        "[hot:1h:local] totals    key \"hot\" = 40: exact",
        "[hot:1h:shared] totals    key \"hot\" = 40: exact",
        "[hot:3h:local] totals    key \"hot\" = 40: exact",
        "[hot:3h:shared] jobs      40 of 40 succeeded in SQLite",
        "[hot:3h:shared] totals    key \"hot\" = 40: exact\n",
        "[spread:3h:shared] totals    40 keys, each = 1: exact",
        "[shared:hot] 3 hosts  ",
        "[shared:spread] 3 hosts against 1: shared ",
        "| JetStream drain, state hot (get + set, one key), shared, 3 hosts (median of 1) |",
        "| JetStream drain, state spread (get + set, a key per message), shared: 3 hosts against 1 |",
        "checks: every run handled every message exactly once",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}

/// `--hosts` empties test-state's keys in the shared state stream between
/// runs: on the configured server that would be a deployment's state, so
/// it refuses that server and touches nothing there.
#[test]
fn bench_state_on_several_hosts_refuses_the_configured_server_and_keeps_its_state() {
    let nats = crate::nats::NatsServer::start();
    let env = Env::new(
        &[],
        &format!("{}shared_state = true\n", nats.config("30s", "")),
    );
    // The configured server holds shared state (the stream is made by any
    // command that connects with shared_state).
    env.ok(&["post", "test.state", r#"{"key": "hot"}"#]);
    nats.with_js(|js| async move {
        js.publish("sluice-state.k.test-state.vhot", "41".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
    let plugin = built_plugins().join("test-state.wasm");
    let out = env.sluice(&[
        "bench",
        "--state",
        "hot",
        "--hosts",
        "3",
        "--plugin",
        plugin.to_str().expect("utf-8 path"),
        "--messages",
        "10",
        "--runs",
        "1",
        "--transport",
        "jetstream",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bench ran on the configured server");
    assert!(
        stderr.contains("runs only on a nats-server it starts itself"),
        "{stderr}"
    );
    assert_eq!(
        nats.count("SLUICE_STATE", "sluice-state.k.test-state.*"),
        1,
        "the configured server's state is untouched"
    );
}

#[test]
fn bench_flow_prints_the_cost_of_a_key_on_every_message() {
    let env = Env::new(&[], "");
    let plugin = built_plugins().join("bench-amounts.wasm");
    let out = env.ok(&[
        "bench",
        "--flow",
        "--plugin",
        plugin.to_str().expect("utf-8 path"),
        "--messages",
        "300",
        "--runs",
        "1",
        "--transport",
        "embedded",
    ]);
    for line in [
        "[embedded:no key] jobs      300 of 300 succeeded in SQLite",
        "[embedded:key per message] jobs      300 of 300 succeeded in SQLite",
        "[embedded] flow      ",
        "| embedded drain, a concurrency key on every message (median of 1) |",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}
