//! Test-only: a long job. Busy-works for `millis` of wall-clock time, then
//! succeeds. The JetStream tests use it to run past the ack wait (in-progress
//! heartbeats), to kill a host mid-job, and to hand a job back on shutdown.

use std::time::{Duration, Instant};

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Spin {
    millis: u64,
}

struct TestSpin;

impl Handler for TestSpin {
    type Request = Spin;

    fn describe() -> Describe {
        // Long calls need more than the default fuel and wall-clock budget;
        // the operator's ceiling caps this ask, so the tests raise it
        // (`[plugin.test-spin]` in tests/it/util.rs).
        Describe::handler("test-spin", "0.1.0")
            .channel("test.spin")
            .fuel(u64::MAX / 2)
            .timeout_ms(120_000)
    }

    fn handle(_ctx: &mut Context, req: Spin) -> Result<Outcome, Error> {
        let start = Instant::now();
        let mut n: u64 = 0;
        while start.elapsed() < Duration::from_millis(req.millis) {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        Outcome::done_with(&serde_json::json!({ "spun_ms": req.millis }))
    }
}

sluice_sdk::export_handler!(TestSpin);
