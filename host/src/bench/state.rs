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

use std::collections::BTreeMap;

use clap::ValueEnum;
use futures_util::StreamExt as _;
use rusqlite::params;

use crate::state::Remote;
use crate::store::Store;

/// The plugin `--state` drives, whose state the checks read.
pub const PLUGIN: &str = "test-state";

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
        Ok(self.judge(&Tally::of_stores(std::slice::from_ref(store)).await?, n))
    }

    /// The same check on what `tally` found.
    pub fn judge(self, tally: &Tally, n: usize) -> Result<String, String> {
        let keys = tally.values.len();
        let ones = tally.values.values().filter(|v| **v == 1).count();
        let hot = tally.values.get("hot").copied();
        let want = i64::try_from(n).unwrap_or(i64::MAX);
        let split = match tally.hot_parts.as_slice() {
            parts if parts.len() > 1 => format!(
                ", added up over {} hosts' SQLite, each counting its own share: {}",
                parts.len(),
                parts
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
            _ => String::new(),
        };
        match self {
            StateMode::None if keys == 0 => Ok("none written, as expected".into()),
            StateMode::None => Err(format!("{keys} keys written without state")),
            StateMode::Hot | StateMode::Add if keys == 1 && hot == Some(want) => {
                Ok(format!("key \"hot\" = {want}: exact{split}"))
            }
            StateMode::Hot | StateMode::Add => Err(format!(
                "key \"hot\" = {hot:?} ({keys} keys), not {want}{split}"
            )),
            StateMode::Spread if keys == n && ones == n => Ok(format!("{n} keys, each = 1: exact")),
            StateMode::Spread => Err(format!("{keys} keys, {ones} of them = 1, not {n} at 1")),
        }
    }
}

/// What a run left in `test-state`'s state: each key's integer value,
/// summed over the hosts' stores when each host kept its own (so a
/// counter split between hosts adds up; a non-integer counts as 0).
#[derive(Debug, Default)]
pub struct Tally {
    /// Key -> value.
    pub values: BTreeMap<String, i64>,
    /// Key `hot` in each store that has it, when state is split.
    pub hot_parts: Vec<i64>,
}

impl Tally {
    /// What the SQLite state of `stores` holds.
    pub async fn of_stores(stores: &[Store]) -> anyhow::Result<Tally> {
        let mut tally = Tally::default();
        for store in stores {
            let rows = store
                .call(|conn| {
                    let mut stmt = conn.prepare(
                        "SELECT key, CAST(value AS TEXT) FROM state
                         WHERE plugin = ?1 AND value IS NOT NULL",
                    )?;
                    let rows = stmt
                        .query_map(params![PLUGIN], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                        })?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(rows)
                })
                .await?;
            for (key, value) in rows {
                let value = value.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                if key == "hot" {
                    tally.hot_parts.push(value);
                }
                *tally.values.entry(key).or_insert(0) += value;
            }
        }
        Ok(tally)
    }

    /// What the shared store holds for the keys a `mode` run of `n`
    /// messages writes; `stored_keys`: how many keys of the plugin the
    /// store has in all (so a stray key shows).
    pub async fn of_shared(
        remote: &dyn Remote,
        mode: StateMode,
        n: usize,
        stored_keys: usize,
    ) -> anyhow::Result<Tally> {
        let keys: Vec<String> = match mode {
            StateMode::None => Vec::new(),
            StateMode::Hot | StateMode::Add => vec!["hot".into()],
            StateMode::Spread => (0..n).map(|i| format!("k{i}")).collect(),
        };
        let mut read = futures_util::stream::iter(keys)
            .map(|key| async move {
                let (value, _) = remote
                    .get(PLUGIN, &key)
                    .await
                    .map_err(|e| anyhow::anyhow!("reading {key} from the shared store: {e}"))?;
                anyhow::Ok((key, value))
            })
            .buffer_unordered(64);
        let mut tally = Tally::default();
        while let Some(read) = read.next().await {
            let (key, value) = read?;
            if let Some(v) = value {
                let v = String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0);
                tally.values.insert(key, v);
            }
        }
        // Keys the run should not have written: as many placeholders.
        for extra in tally.values.len()..stored_keys {
            tally.values.insert(format!("\u{0}stray {extra}"), 0);
        }
        Ok(tally)
    }
}
