//! Test plugin (not an example): one of each effect, so tests can check that
//! effects are applied exactly once on success and not at all on failure or
//! crash. Request: `{"amount": i64}`. Adds `amount` to the state key "total",
//! posts `{"amount", "message_id"}` to `test.counted` and returns
//! `{"total": new_total}`.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Count {
    amount: i64,
}

struct TestCounter;

impl Handler for TestCounter {
    type Request = Count;

    fn describe() -> Describe {
        Describe::handler("test-counter", "0.1.0")
            .channel("test.counter")
            // Shared with test-flaky: an event channel with two handlers.
            .channel("test.fanout")
    }

    fn handle(ctx: &mut Context, req: Count) -> Result<Outcome, Error> {
        let total: i64 = ctx.state().get("total")?.unwrap_or(0);
        let total = total.wrapping_add(req.amount);
        ctx.state().set("total", &total)?;
        let counted = serde_json::json!({
            "amount": req.amount,
            "message_id": ctx.message_id(),
        });
        ctx.post("test.counted", &counted)?;
        Outcome::done_with(&serde_json::json!({ "total": total }))
    }
}

sluice_sdk::export_handler!(TestCounter);
