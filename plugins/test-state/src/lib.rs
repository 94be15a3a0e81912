//! Test plugin (not an example): state operations on demand, for the state
//! tests and `sluice bench --state`. Request (all optional):
//!
//! - `{"op": "getset", "key": k, "by": n}` (the default op): the README's
//!   idiom, `get` then `set` to the value + n (default 1); returns
//!   `{"value": new}`;
//! - `{"op": "add", "key": k, "by": n}`: `add` without reading; returns `{}`;
//! - `{"op": "delete", "key": k}`; returns `{}`;
//! - `{"op": "transfer", "from": a, "to": b, "by": n}`: reads `a` then `b`,
//!   moves n from one to the other; returns `{"from": .., "to": ..}`;
//! - `{"op": "none"}`: the same request parsing and result, no state (the
//!   stateless baseline of the same shape);
//! - `{"op": "need", "key": k, "by": n}`: reads `k`; a permanent error if it
//!   is below n, else returns `{"value": v}` (a failure decided on state);
//! - `{"op": "post", "key": k, "bytes": n}`: getset on `k`, and posts a
//!   JSON string of n bytes to `test.after`; returns `{"value": new}`;
//! - `{"op": "copy", "from": a, "to": b}`: reads `a` (only), sets `b` to
//!   its value (0 if absent); returns `{"value": v}`.
//!
//! `"hold_ms": t` keeps the call busy (spinning on the clock) for t ms
//! after its reads, as a long job would hold the keys it read.

use std::time::{Duration, Instant};

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Op {
    #[serde(default = "getset")]
    op: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default = "one")]
    by: i64,
    #[serde(default)]
    hold_ms: u64,
    #[serde(default)]
    bytes: usize,
}

fn getset() -> String {
    "getset".into()
}

fn one() -> i64 {
    1
}

fn hold(ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

struct TestState;

impl Handler for TestState {
    type Request = Op;

    fn describe() -> Describe {
        Describe::handler("test-state", "0.1.0").channel("test.state")
    }

    fn handle(ctx: &mut Context, req: Op) -> Result<Outcome, Error> {
        if req.op == "post" {
            let n: i64 = ctx.state().get(&req.key)?.unwrap_or(0);
            ctx.state().set(&req.key, &(n + 1))?;
            ctx.post("test.after", &"x".repeat(req.bytes))?;
            return Outcome::done_with(&serde_json::json!({ "value": n + 1 }));
        }
        let state = ctx.state();
        match req.op.as_str() {
            "getset" => {
                let n: i64 = state.get(&req.key)?.unwrap_or(0);
                hold(req.hold_ms);
                let value = n + req.by;
                state.set(&req.key, &value)?;
                Outcome::done_with(&serde_json::json!({ "value": value }))
            }
            "add" => {
                state.add(&req.key, req.by);
                hold(req.hold_ms);
                Outcome::done_with(&serde_json::json!({}))
            }
            "delete" => {
                state.delete(&req.key);
                Outcome::done_with(&serde_json::json!({}))
            }
            "transfer" => {
                let from: i64 = state.get(&req.from)?.unwrap_or(0);
                let to: i64 = state.get(&req.to)?.unwrap_or(0);
                hold(req.hold_ms);
                state.set(&req.from, &(from - req.by))?;
                state.set(&req.to, &(to + req.by))?;
                Outcome::done_with(&serde_json::json!({ "from": from - req.by, "to": to + req.by }))
            }
            "copy" => {
                let n: i64 = state.get(&req.from)?.unwrap_or(0);
                hold(req.hold_ms);
                state.set(&req.to, &n)?;
                Outcome::done_with(&serde_json::json!({ "value": n }))
            }
            "need" => {
                let n: i64 = state.get(&req.key)?.unwrap_or(0);
                if n < req.by {
                    return Err(Error::permanent(format!(
                        "{} is {n}, below {}",
                        req.key, req.by
                    )));
                }
                Outcome::done_with(&serde_json::json!({ "value": n }))
            }
            "none" => {
                hold(req.hold_ms);
                Outcome::done_with(&serde_json::json!({}))
            }
            other => Err(Error::permanent(format!("unknown op {other:?}"))),
        }
    }
}

sluice_sdk::export_handler!(TestState);
