//! The config file as written: every field optional, unknown keys
//! rejected, sizes as "64MiB" or bytes. `build` (in `mod.rs`) turns it into
//! the validated [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::store::Synchronous;

/// A size in bytes, written as an integer or as "64MiB" / "512KiB" / "1GiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bytes(pub(super) u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
        }
    }
}

pub(super) fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 67108864, \"64MiB\")"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The sandbox-limit keys of `[limits]` and `[plugins.NAME]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) fuel: Option<u64>,
    pub(super) memory: Option<Bytes>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
}

/// One `[plugins.NAME]` table: policy and limit keys side by side.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub(super) max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) backoff_max: Option<Duration>,
    pub(super) concurrency: Option<usize>,
    pub(super) breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) breaker_cooldown: Option<Duration>,
    pub(super) fuel: Option<u64>,
    pub(super) memory: Option<Bytes>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
    /// Flow control (`config::flow`).
    pub(super) concurrency_key: Option<String>,
    pub(super) per_key_concurrency: Option<u32>,
    pub(super) rate: Option<String>,
    pub(super) rate_burst: Option<u32>,
    pub(super) rate_key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    pub(super) url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) ack_wait: Option<Duration>,
    pub(super) replicas: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) duplicate_window: Option<Duration>,
    pub(super) shared_state: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) addr: Option<String>,
    pub(super) token: Option<String>,
    pub(super) body_limit: Option<Bytes>,
    pub(super) allowed_hosts: Option<Vec<String>>,
}

/// `[sandbox]`: what every call of the host shares.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    pub(super) calls: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) idle_release: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) synchronous: Option<Synchronous>,
}

/// One `[[cron]]` entry as written (checked in `sections::cron_entries`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCron {
    pub(super) name: Option<String>,
    pub(super) schedule: Option<String>,
    pub(super) time_zone: Option<String>,
    pub(super) channel: Option<String>,
    pub(super) kind: Option<crate::message::MessageKind>,
    pub(super) body: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) missed: Option<crate::cron::Missed>,
    #[serde(default, with = "humantime_serde")]
    pub(super) deadline: Option<Duration>,
}

/// The config file as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) plugins_dir: Option<PathBuf>,
    pub(super) data_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(super) drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) compile_timeout: Option<Duration>,
    #[serde(default)]
    pub(super) store: RawStore,
    pub(super) nats: Option<RawNats>,
    pub(super) http: Option<RawHttp>,
    pub(super) otel: Option<RawOtel>,
    #[serde(default)]
    pub(super) sandbox: RawSandbox,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    /// Read with the per-plugin table's type; its limit keys are refused
    /// (they belong in `[limits]`).
    pub(super) policy: RawPlugin,
    #[serde(default)]
    pub(super) plugin: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    pub(super) cron: Vec<RawCron>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOtel {
    pub(super) endpoint: Option<String>,
    pub(super) service_name: Option<String>,
}
