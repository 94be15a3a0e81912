//! Test plugin (not an example): never returns, so the host's fuel and
//! timeout limits must stop it. `black_box` keeps the optimiser from proving
//! the loop useless and removing it.

use sluice_sdk::prelude::*;

struct TestLoop;

impl Handler for TestLoop {
    type Request = serde::de::IgnoredAny;

    fn describe() -> Describe {
        Describe::handler("test-loop", "0.1.0").channel("test.loop")
    }

    fn handle(_ctx: &mut Context, _req: Self::Request) -> Result<Outcome, Error> {
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

sluice_sdk::export_handler!(TestLoop);
