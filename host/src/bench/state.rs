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
use rusqlite::params;

use crate::store::Store;

/// The plugin `--state` drives, whose state the checks read.
const PLUGIN: &str = "test-state";

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

    /// Checks what a drain of `n` messages left in state (each run has a
    /// store of its own): one key at exactly `n` (`hot`, `add`), `n` keys
    /// at exactly 1 (`spread`), nothing (`none`). `Ok`: the line to print;
    /// `Err`: what is wrong.
    pub async fn check(self, store: &Store, n: usize) -> anyhow::Result<Result<String, String>> {
        let (keys, ones, hot) = store
            .call(|conn| {
                Ok(conn.query_row(
                    "SELECT COUNT(*),
                         COALESCE(SUM(CAST(value AS TEXT) = '1'), 0),
                         (SELECT CAST(value AS TEXT) FROM state
                          WHERE plugin = ?1 AND key = 'hot')
                     FROM state WHERE plugin = ?1 AND value IS NOT NULL",
                    params![PLUGIN],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )?)
            })
            .await?;
        let n64 = n as i64;
        let want = n.to_string();
        Ok(match self {
            StateMode::None if keys == 0 => Ok("none written, as expected".into()),
            StateMode::None => Err(format!("{keys} keys written without state")),
            StateMode::Hot | StateMode::Add
                if keys == 1 && hot.as_deref() == Some(want.as_str()) =>
            {
                Ok(format!("key \"hot\" = {want}: exact"))
            }
            StateMode::Hot | StateMode::Add => {
                Err(format!("key \"hot\" = {hot:?} ({keys} keys), not {want}"))
            }
            StateMode::Spread if keys == n64 && ones == n64 => {
                Ok(format!("{n} keys, each = 1: exact"))
            }
            StateMode::Spread => Err(format!("{keys} keys, {ones} of them = 1, not {n} at 1")),
        })
    }
}
