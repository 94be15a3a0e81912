//! `sluice bench --state MODES`: the same messages through the `test-state`
//! plugin with and without state, so the cost of state (and of contention
//! on one key) is a ratio measured in one run.
//!
//! Every mode runs the same handler code path and request parsing
//! (`test-state`'s ops); only what it does with state differs:
//! - `none`: no state (the baseline every other mode is divided by);
//! - `hot`: the README's idiom, get then set + 1, all on ONE key;
//! - `spread`: the same idiom on a key per message (no contention);
//! - `add`: `state.add(key, 1)` on one key (commutative, no read).

use clap::ValueEnum;

/// What the handler does with state in a `--state` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateMode {
    /// No state: the baseline.
    None,
    /// get + set on one shared key.
    Hot,
    /// get + set on a key per message.
    Spread,
    /// add on one shared key.
    Add,
}

impl StateMode {
    /// The name printed in the report.
    pub fn name(self) -> &'static str {
        match self {
            StateMode::None => "none",
            StateMode::Hot => "hot",
            StateMode::Spread => "spread",
            StateMode::Add => "add",
        }
    }

    /// What the mode does, for the table.
    pub fn describe(self) -> &'static str {
        match self {
            StateMode::None => "none",
            StateMode::Hot => "hot (get + set, one key)",
            StateMode::Spread => "spread (get + set, a key per message)",
            StateMode::Add => "add (one key)",
        }
    }

    /// The request body of message `i`.
    pub fn body(self, i: usize) -> Vec<u8> {
        match self {
            StateMode::None => br#"{"op":"none"}"#.to_vec(),
            StateMode::Hot => br#"{"key":"hot"}"#.to_vec(),
            StateMode::Spread => format!(r#"{{"key":"k{i}"}}"#).into_bytes(),
            StateMode::Add => br#"{"op":"add","key":"hot"}"#.to_vec(),
        }
    }

    /// `modes` with `none` first (the baseline) and no repeats.
    pub fn with_baseline(modes: &[StateMode]) -> Vec<StateMode> {
        let mut out = vec![StateMode::None];
        for m in modes {
            if !out.contains(m) {
                out.push(*m);
            }
        }
        out
    }
}
