//! `sluice bench` runs end to end on the embedded queue and prints its
//! report. Figures are not asserted (they depend on the machine); that the
//! run completed every job and printed each line is.

use crate::util::{Env, built_plugins};

#[test]
fn bench_runs_on_the_embedded_queue_and_prints_its_report() {
    let env = Env::new(&[], "");
    let plugin = built_plugins().join("test-flaky.wasm");
    let out = env.ok(&[
        "bench",
        "--plugin",
        plugin.to_str().expect("utf-8 path"),
        "--messages",
        "200",
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
    ]);
    for line in [
        "[embedded]   enqueue   200 msgs",
        "[embedded]   drain     200 jobs",
        "[embedded]   latency   post->handled p50",
        "[embedded]   jobs      200 of 200 succeeded in SQLite",
        "[embedded]   steady    200 msgs/s offered",
        "[embedded]   jobs      200 of 200 succeeded in SQLite",
        "[embedded]   rss       peak",
        "[baseline]   sandbox   instantiate+call+drop p50",
        "[baseline]   native    same work as a Rust call p50",
        "[reload]     swap      file written -> new version serving, 1 swaps",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}
