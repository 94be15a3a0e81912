//! Test plugin: a chain of jobs. `{"hops": n}` on `test.chain` posts
//! `{"hops": n - 1}` to `test.chain` until n is 0, so one message becomes
//! n + 1 jobs, each caused by the one before (the trace tests follow it).

use serde::Deserialize;
use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Hop {
    hops: u32,
}

struct TestChain;

impl Handler for TestChain {
    type Request = Hop;

    fn describe() -> Describe {
        Describe::handler("test-chain", "0.1.0").channel("test.chain")
    }

    fn handle(ctx: &mut Context, req: Hop) -> Result<Outcome, Error> {
        if req.hops > 0 {
            ctx.post("test.chain", &serde_json::json!({ "hops": req.hops - 1 }))?;
        }
        Outcome::done_with(&serde_json::json!({ "hops": req.hops }))
    }
}

sluice_sdk::export_handler!(TestChain);
