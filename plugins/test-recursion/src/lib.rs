//! Test plugin (not an example): unbounded recursion, to check that a stack
//! overflow traps the instance instead of taking the host down. Each frame
//! holds a 512-byte array and uses it after the recursive call, so the
//! optimiser can turn it neither into a loop nor into a tail call.

use std::hint::black_box;

use sluice_sdk::prelude::*;

#[allow(unconditional_recursion)]
fn dive(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    let below = dive(black_box(depth + 1));
    black_box(frame)[(depth % 64) as usize].wrapping_add(below)
}

struct TestRecursion;

impl Handler for TestRecursion {
    type Request = serde::de::IgnoredAny;

    fn describe() -> Describe {
        Describe::handler("test-recursion", "0.1.0").channel("test.recursion")
    }

    fn handle(_ctx: &mut Context, _req: Self::Request) -> Result<Outcome, Error> {
        let depth = dive(black_box(0));
        Outcome::done_with(&depth)
    }
}

sluice_sdk::export_handler!(TestRecursion);
