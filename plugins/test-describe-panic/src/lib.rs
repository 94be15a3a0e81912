//! Test plugin (not an example): a valid handler component whose
//! `describe()` panics, i.e. a plugin that fails while being loaded. The host
//! must reject it with a clear error and keep running the others.

use sluice_sdk::prelude::*;

struct TestDescribePanic;

impl Handler for TestDescribePanic {
    type Request = serde::de::IgnoredAny;

    fn describe() -> Describe {
        panic!("boom: test-describe-panic panicked in describe on purpose");
    }

    fn handle(_ctx: &mut Context, _req: Self::Request) -> Result<Outcome, Error> {
        Ok(Outcome::done())
    }
}

sluice_sdk::export_handler!(TestDescribePanic);
