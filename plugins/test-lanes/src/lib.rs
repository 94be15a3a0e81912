//! Test-only: one handler on many channels, for the host-wide call budget
//! (`[sandbox] calls`). On `lanes.0` .. `lanes.7` it busy-works for
//! `millis` of wall-clock time, then posts `{"millis": 0}` to `post` if
//! given (`lanes.out` is mapped, so its post takes a mapper call too),
//! then succeeds with the channel it ran on.

use std::time::{Duration, Instant};

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Work {
    millis: u64,
    #[serde(default)]
    post: Option<String>,
}

struct TestLanes;

impl Handler for TestLanes {
    type Request = Work;

    fn describe() -> Describe {
        let mut d = Describe::handler("test-lanes", "0.1.0");
        for i in 0..8 {
            d = d.channel(format!("lanes.{i}"));
        }
        d.channel("lanes.out")
    }

    fn handle(ctx: &mut Context, req: Work) -> Result<Outcome, Error> {
        let start = Instant::now();
        let mut n: u64 = 0;
        while start.elapsed() < Duration::from_millis(req.millis) {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        if let Some(channel) = &req.post {
            ctx.post(channel, &serde_json::json!({ "millis": 0 }))?;
        }
        let channel = ctx.channel().to_owned();
        Outcome::done_with(&serde_json::json!({ "channel": channel }))
    }
}

sluice_sdk::export_handler!(TestLanes);
