//! Test plugin (not an example): panics in `handle`. The instance traps
//! (after std prints the message to stderr); the host must treat it as a
//! failed attempt and stay up.

use sluice_sdk::prelude::*;

struct TestPanic;

impl Handler for TestPanic {
    type Request = serde::de::IgnoredAny;

    fn describe() -> Describe {
        Describe::handler("test-panic", "0.1.0").channel("test.panic")
    }

    fn handle(_ctx: &mut Context, _req: Self::Request) -> Result<Outcome, Error> {
        panic!("boom: test-panic panicked on purpose");
    }
}

sluice_sdk::export_handler!(TestPanic);
