//! Test plugin (not an example): asks `describe()` for every limit at its
//! largest (`u64::MAX` fuel, memory and wall clock) and then never returns.
//! The operator's ceilings must apply anyway: the host caps each ask, so the
//! call is stopped by the configured fuel or timeout.

use sluice_sdk::prelude::*;

struct TestGreedy;

impl Handler for TestGreedy {
    type Request = serde::de::IgnoredAny;

    fn describe() -> Describe {
        Describe::handler("test-greedy", "0.1.0")
            .channel("test.greedy")
            .fuel(u64::MAX)
            .memory_bytes(u64::MAX)
            .timeout_ms(u64::MAX)
    }

    fn handle(_ctx: &mut Context, _req: Self::Request) -> Result<Outcome, Error> {
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

sluice_sdk::export_handler!(TestGreedy);
