//! What the benchmark's messages carry, what their handler does with them,
//! and how a run proves it handled each exactly once.
//!
//! The default workload is the one job queues are usually compared on:
//! message `i` is `{"id": i, "amount": i % 100, "note": "hello"}`, handled
//! by `bench-amounts` (a plugin built the way the README tells users to,
//! see `tests/plugins/bench-amounts`), which parses it and returns
//! `{"id", "amount"}` as the job's result. After a run the bench adds up
//! the amounts recorded in SQLite: a job lost or run twice changes the sum
//! or the count. `--body JSON` instead gives every message the same body
//! (for other plugins), and then only the count is checked.

use std::hint::black_box;

use super::state::StateMode;

/// The messages of a run.
#[derive(Debug, Clone)]
pub enum Workload {
    /// `{"id": i, "amount": i % 100, "note": "hello"}`.
    Amounts,
    /// The same body for every message.
    Fixed(String),
    /// `test-state` doing one thing with state (`--state`, see `state.rs`).
    State(StateMode),
}

/// The name of the plugin that handles [`Workload::Amounts`].
pub const AMOUNTS_PLUGIN: &str = "bench-amounts";

/// The same workload in Python (`plugins/py-bench-amounts`), so a Python
/// plugin's figures can be read next to Rust's.
pub const PY_AMOUNTS_PLUGIN: &str = "py-bench-amounts";

impl Workload {
    /// The body of message `index`.
    pub fn body(&self, index: usize) -> Vec<u8> {
        match self {
            Workload::Amounts => format!(
                r#"{{"id":{index},"amount":{},"note":"hello"}}"#,
                index % 100
            )
            .into_bytes(),
            Workload::Fixed(body) => body.clone().into_bytes(),
            Workload::State(mode) => mode.body(index),
        }
    }

    /// The sum of the amounts of messages `0..count`, if this workload has
    /// amounts.
    pub fn expected_sum(&self, count: usize) -> Option<i64> {
        match self {
            Workload::Amounts => Some((0..count).map(|i| (i % 100) as i64).sum()),
            Workload::Fixed(_) | Workload::State(_) => None,
        }
    }

    /// For the report's header.
    pub fn describe(&self) -> String {
        match self {
            Workload::Amounts => r#"{"id": i, "amount": i % 100, "note": "hello"}"#.into(),
            Workload::Fixed(body) => body.clone(),
            Workload::State(mode) => String::from_utf8_lossy(&mode.body(0)).replace("k0", "k<i>"),
        }
    }

    /// The handler's work done natively (the raw baselines' handler):
    /// parse the body, build the result. Returns the amount it read (0 for
    /// a fixed body).
    pub fn native_handle(&self, body: &[u8]) -> i64 {
        match self {
            Workload::Amounts => native_amounts(body),
            Workload::Fixed(_) | Workload::State(_) => {
                black_box(native_flaky(body, 1));
                0
            }
        }
    }
}

/// What `bench-amounts` does, natively.
fn native_amounts(body: &[u8]) -> i64 {
    #[derive(serde::Deserialize)]
    struct Payment {
        id: u64,
        amount: i64,
        note: String,
    }
    match serde_json::from_slice::<Payment>(body) {
        Ok(p) if p.note.len() <= 1024 => {
            black_box(serde_json::json!({ "id": p.id, "amount": p.amount }).to_string());
            p.amount
        }
        Ok(_) => 0,
        Err(e) => {
            black_box(e.to_string());
            0
        }
    }
}

/// What test-flaky does with its request, natively.
fn native_flaky(body: &[u8], attempt: u32) -> String {
    #[derive(serde::Deserialize)]
    struct Flaky {
        #[serde(default)]
        fail_times: u32,
        #[serde(default)]
        permanent: bool,
    }
    match serde_json::from_slice::<Flaky>(body) {
        Ok(req) if !req.permanent && attempt > req.fail_times => {
            serde_json::json!({ "attempt": attempt }).to_string()
        }
        Ok(_) => "failed on purpose".to_owned(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_bodies_parse_and_add_up() {
        let w = Workload::Amounts;
        assert_eq!(
            String::from_utf8(w.body(123)).unwrap_or_default(),
            r#"{"id":123,"amount":23,"note":"hello"}"#
        );
        let sum: i64 = (0..250).map(|i| w.native_handle(&w.body(i))).sum();
        assert_eq!(Some(sum), w.expected_sum(250));
        assert_eq!(w.expected_sum(20_000), Some(990_000));
        assert_eq!(Workload::Fixed("{}".into()).expected_sum(10), None);
    }

    #[test]
    fn native_flaky_does_the_plugins_work() {
        assert_eq!(native_flaky(b"{}", 1), r#"{"attempt":1}"#);
        assert_eq!(
            native_flaky(br#"{"fail_times": 1}"#, 1),
            "failed on purpose"
        );
    }
}
