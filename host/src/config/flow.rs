//! The flow keys of a `[plugin.NAME]` table (`crate::flow`): a
//! concurrency key with its limit, a rate limit with its burst and key.

use super::ConfigError;
use super::raw::RawPlugin;
use crate::flow::{Concurrency, FlowSpec, KeySource, Rate, RateLimit};

/// Most jobs of one key at once.
pub const MAX_PER_KEY: u32 = 100_000;

/// True when the table sets any flow key (they are per handler only).
pub(super) fn any(t: &RawPlugin) -> bool {
    t.concurrency_key.is_some()
        || t.per_key_concurrency.is_some()
        || t.rate.is_some()
        || t.rate_burst.is_some()
        || t.rate_key.is_some()
}

/// The table's flow rules, checked.
pub(super) fn spec(where_: &str, t: &RawPlugin) -> Result<FlowSpec, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(format!("{where_}: {m}"));
    let concurrency = match (&t.concurrency_key, t.per_key_concurrency) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(bad(
                "per_key_concurrency needs concurrency_key (header:NAME or a JSON pointer such as /tenant)".into(),
            ));
        }
        (Some(k), limit) => {
            let key = KeySource::parse(k).map_err(|e| bad(format!("concurrency_key {e}")))?;
            let limit = limit.unwrap_or(1);
            if limit == 0 || limit > MAX_PER_KEY {
                return Err(bad(format!(
                    "per_key_concurrency must be between 1 and {MAX_PER_KEY}, not {limit}"
                )));
            }
            Some(Concurrency { key, limit })
        }
    };
    let rate = match &t.rate {
        None => {
            if t.rate_burst.is_some() || t.rate_key.is_some() {
                return Err(bad("rate_burst and rate_key need rate (N/INTERVAL)".into()));
            }
            None
        }
        Some(r) => {
            let rate = Rate::parse(r, t.rate_burst).map_err(bad)?;
            let key = t
                .rate_key
                .as_deref()
                .map(KeySource::parse)
                .transpose()
                .map_err(|e| bad(format!("rate_key {e}")))?;
            Some(RateLimit { key, rate })
        }
    };
    Ok(FlowSpec { concurrency, rate })
}
