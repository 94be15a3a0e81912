//! Test plugin (not an example): fails on purpose, to exercise retries and
//! dead letters. Request: `{"fail_times": u32, "permanent": bool}` (both
//! optional). Fails permanently if asked to, otherwise fails with a
//! retryable error on attempts 1..=fail_times and then succeeds with
//! `{"attempt": n}`.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Flaky {
    #[serde(default)]
    fail_times: u32,
    #[serde(default)]
    permanent: bool,
}

struct TestFlaky;

impl Handler for TestFlaky {
    type Request = Flaky;

    fn describe() -> Describe {
        Describe::handler("test-flaky", "0.1.0")
            .channel("test.flaky")
            // Shared with test-counter: an event channel with two handlers.
            .channel("test.fanout")
    }

    fn handle(ctx: &mut Context, req: Flaky) -> Result<Outcome, Error> {
        if req.permanent {
            return Err(Error::permanent("asked to fail permanently"));
        }
        let attempt = ctx.attempt();
        if attempt <= req.fail_times {
            return Err(Error::retryable(format!(
                "attempt {attempt} of {} fails on purpose",
                req.fail_times
            )));
        }
        Outcome::done_with(&serde_json::json!({ "attempt": attempt }))
    }
}

sluice_sdk::export_handler!(TestFlaky);
