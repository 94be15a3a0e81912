//! The bounds every value is checked against, so none can overflow the
//! arithmetic it meets, and how per-plugin tables merge onto the defaults.

use std::time::Duration;

use super::raw::RawPlugin;
use super::{ConfigError, MAX_CONCURRENCY, Policy};
use crate::runtime::{Limits, LimitsSpec};

pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) const MS: Duration = Duration::from_millis(1);
pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

/// Most attempts a policy may give a job.
pub(super) const MAX_ATTEMPTS: u32 = 10_000;

/// `d` if it lies in `min..=max`, else an error naming the key. Every
/// duration in the config goes through here, so none can overflow the
/// arithmetic it meets (`Instant + d`, milliseconds as i64, NATS's
/// nanoseconds).
pub(super) fn bounded(
    where_: &str,
    key: &str,
    d: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    if d < min || d > max {
        let sep = if where_.is_empty() { "" } else { ": " };
        return Err(ConfigError::Invalid(format!(
            "{where_}{sep}{key} must be between {} and {}, not {}",
            humantime::format_duration(min),
            humantime::format_duration(max),
            humantime::format_duration(d)
        )));
    }
    Ok(d)
}

/// WebAssembly's page size: memory caps are rounded up to it.
pub(super) const WASM_PAGE: u64 = 64 * 1024;

/// `base` with the fields `set` gives replaced.
pub(super) fn ceiling(base: Limits, set: LimitsSpec) -> Limits {
    Limits {
        fuel: set.fuel.unwrap_or(base.fuel),
        memory_bytes: set.memory_bytes.unwrap_or(base.memory_bytes),
        timeout_ms: set.timeout_ms.unwrap_or(base.timeout_ms),
    }
}

pub(super) fn merge_policy(base: Policy, t: &RawPlugin) -> Policy {
    Policy {
        max_attempts: t.max_attempts.unwrap_or(base.max_attempts),
        backoff_initial: t.backoff_initial.unwrap_or(base.backoff_initial),
        backoff_max: t.backoff_max.unwrap_or(base.backoff_max),
        concurrency: t.concurrency.unwrap_or(base.concurrency),
        breaker_failures: t.breaker_failures.unwrap_or(base.breaker_failures),
        breaker_cooldown: t.breaker_cooldown.unwrap_or(base.breaker_cooldown),
    }
}

pub(super) fn check_policy(where_: &str, p: &Policy) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(format!("{where_}: {m}")));
    if p.max_attempts == 0 {
        return bad("max_attempts must be at least 1".into());
    }
    // Independent of `[sandbox] calls`: a pump's jobs beyond the host's
    // budget wait for it (runtime/admission.rs) without losing an attempt.
    if p.concurrency == 0 || p.concurrency > MAX_CONCURRENCY {
        return bad(format!(
            "concurrency must be between 1 and {MAX_CONCURRENCY}, not {}",
            p.concurrency
        ));
    }
    bounded(
        where_,
        "backoff_max",
        p.backoff_max,
        Duration::ZERO,
        7 * DAY,
    )?;
    bounded(
        where_,
        "breaker_cooldown",
        p.breaker_cooldown,
        Duration::ZERO,
        DAY,
    )?;
    if p.max_attempts > MAX_ATTEMPTS {
        return bad(format!(
            "max_attempts must be at most {MAX_ATTEMPTS}, not {}",
            p.max_attempts
        ));
    }
    if p.backoff_initial > p.backoff_max {
        return bad(format!(
            "backoff_initial ({}) is above backoff_max ({})",
            humantime::format_duration(p.backoff_initial),
            humantime::format_duration(p.backoff_max)
        ));
    }
    Ok(())
}

/// Every limit a table sets is above zero and at most its hard maximum
/// (`Limits::HARD_MAX`).
pub(super) fn check_limits(where_: &str, l: &LimitsSpec) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(format!("{where_}: {m}")));
    let max = Limits::HARD_MAX;
    match l.fuel {
        Some(0) => return bad("fuel must be above 0".into()),
        Some(f) if f > max.fuel => {
            return bad(format!(
                "fuel {f} is above the hard maximum of {}",
                max.fuel
            ));
        }
        _ => {}
    }
    match l.timeout_ms {
        Some(0) => return bad("timeout must be above 0".into()),
        Some(t) if t > max.timeout_ms => {
            return bad(format!(
                "timeout {} is above the hard maximum of {}",
                humantime::format_duration(Duration::from_millis(t)),
                humantime::format_duration(Duration::from_millis(max.timeout_ms))
            ));
        }
        _ => {}
    }
    match l.memory_bytes {
        Some(0) => bad("memory must be above 0".into()),
        Some(m) if m > max.memory_bytes => bad(format!(
            "memory {m} bytes is above the hard maximum of {} bytes (4 GiB, all a 32-bit memory can address)",
            max.memory_bytes
        )),
        _ => Ok(()),
    }
}
