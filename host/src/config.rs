//! Configuration in two stages: the raw TOML file (every field optional,
//! unknown keys rejected) and command-line flags, then one validated
//! [`Config`] that is passed down explicitly. Nothing reads configuration from
//! a global.
//!
//! ```toml
//! plugins_dir = "./plugins"      # where the .wasm files are
//! data_dir = "./sluice-data"     # SQLite database and lock file
//! drain_timeout = "30s"          # on SIGINT/SIGTERM: time for in-flight jobs
//! poll_interval = "100ms"        # idle pumps look for rows posted by others
//! retention = "7d"               # succeeded jobs are pruned after this
//! compile_timeout = "60s"        # a plugin compiling longer is rejected
//!
//! [store]
//! synchronous = "full"           # or "normal": see README, Durability
//!
//! [nats]                         # run on JetStream instead of the embedded queue
//! url = "nats://127.0.0.1:4222"  # or --nats URL
//! shared_state = false           # true: plugin state is one store for every
//!                                # host (the SLUICE_STATE stream), not SQLite
//! ack_wait = "30s"               # no ack or heartbeat for this long: redelivered
//! replicas = 1                   # 3 on a production cluster
//! max_age = "7d"                 # how long the stream keeps messages
//! duplicate_window = "2m"        # re-sent message ids dropped within this
//!
//! [http]                         # the HTTP API (or --http ADDR)
//! addr = "127.0.0.1:8080"        # a non-loopback address needs a token
//! token = "..."                  # bearer token (or SLUICE_HTTP_TOKEN)
//! body_limit = "1MiB"            # larger request bodies get 413
//! allowed_hosts = ["sluice.local"] # without a token: Host names served
//!                                # besides the bound address
//!
//! [sandbox]
//! calls = 16                     # sandboxed calls at once, host-wide (all pumps
//!                                # and mappers share it fairly); default 8 per
//!                                # core, between 8 and 64
//! idle_release = "5s"            # no call for this long: free heap memory
//!                                # goes back to the kernel
//!
//! [otel]                         # export spans over OTLP/HTTP (off without it)
//! endpoint = "http://127.0.0.1:4318"   # spans go to {endpoint}/v1/traces
//! service_name = "sluice"
//!
//! [limits]                       # sandbox ceilings for every call
//! fuel = 5_000_000_000
//! memory = "64MiB"               # or bytes
//! timeout = "10s"
//!
//! [policy]                       # handler defaults
//! max_attempts = 5
//! backoff_initial = "1s"
//! backoff_max = "5m"
//! concurrency = 64
//! breaker_failures = 10          # 0: no circuit breaker
//! breaker_cooldown = "30s"
//!
//! [plugin.task-reminder]         # per plugin (by describe() name): any of the above
//! max_attempts = 3
//! timeout = "2s"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::runtime::{Limits, LimitsSpec, RuntimeConfig};
use crate::store::{StoreOptions, Synchronous};
use crate::telemetry::OtelSettings;
use crate::transport::JetStreamSettings;

/// Why the configuration is unusable. Each message names the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message, with the line.
        reason: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A size in bytes, written as an integer or as "64MiB" / "512KiB" / "1GiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bytes(u64);

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

fn parse_bytes(s: &str) -> Result<u64, String> {
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
struct RawLimits {
    fuel: Option<u64>,
    memory: Option<Bytes>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

/// One `[plugins.NAME]` table: policy and limit keys side by side.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
    concurrency: Option<usize>,
    breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    breaker_cooldown: Option<Duration>,
    fuel: Option<u64>,
    memory: Option<Bytes>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawNats {
    url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    ack_wait: Option<Duration>,
    replicas: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    duplicate_window: Option<Duration>,
    shared_state: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    addr: Option<String>,
    token: Option<String>,
    body_limit: Option<Bytes>,
    allowed_hosts: Option<Vec<String>>,
}

/// The HTTP API's settings (`[http]`, `--http ADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Bearer token every request must carry (except the health probes);
    /// required unless `addr` is a loopback address.
    pub token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Without a token: `Host` names served besides the bound address and
    /// loopback names (`name` or `name:port`).
    pub allowed_hosts: Vec<String>,
}

/// `[sandbox]`: what every call of the host shares.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    calls: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    idle_release: Option<Duration>,
}

/// Most sandboxed calls at once a host may be configured for (`[sandbox]
/// calls`): each is an instance pool slot, with its virtual memory
/// reservation.
pub const MAX_CALLS: u32 = 1024;

/// Most jobs one pump may hold at once (`concurrency`).
pub const MAX_CONCURRENCY: usize = 4096;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawStore {
    synchronous: Option<Synchronous>,
}

/// The config file as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawFile {
    plugins_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    compile_timeout: Option<Duration>,
    #[serde(default)]
    store: RawStore,
    nats: Option<RawNats>,
    http: Option<RawHttp>,
    otel: Option<RawOtel>,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    /// Read with the per-plugin table's type; its limit keys are refused
    /// (they belong in `[limits]`).
    policy: RawPlugin,
    #[serde(default)]
    plugin: BTreeMap<String, RawPlugin>,
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--plugins DIR`.
    pub plugins_dir: Option<PathBuf>,
    /// `--data DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--nats URL`: run on JetStream.
    pub nats_url: Option<String>,
    /// `--http ADDR`: serve (or, for `pause`/`resume`, call) the HTTP API.
    pub http_addr: Option<String>,
    /// `SLUICE_HTTP_TOKEN`: the API's bearer token.
    pub http_token: Option<String>,
}

/// How a handler's failures are retried and how many of its jobs run at once
/// (Brighter's handler policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts before a job is dead-lettered (>= 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time, with jitter.
    pub backoff_initial: Duration,
    /// Cap on the delay.
    pub backoff_max: Duration,
    /// Jobs of this handler running at once on this host.
    pub concurrency: usize,
    /// Consecutive failures that open the circuit breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker pauses the handler's pump.
    pub breaker_cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            concurrency: 64,
            breaker_failures: 10,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// One plugin's settings, by its `describe()` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginConfig {
    /// Its policy (defaults filled in).
    pub policy: Policy,
    /// Its sandbox ceiling: the table's limit keys, the rest from
    /// `[limits]`. The plugin may ask for less, never for more.
    pub ceiling: Limits,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the `.wasm` files are.
    pub plugins_dir: PathBuf,
    /// Where the database and lock file live.
    pub data_dir: PathBuf,
    /// SQLite options.
    pub store: StoreOptions,
    /// JetStream, when configured (`--nats` or `[nats]`); else the embedded
    /// queue.
    pub nats: Option<JetStreamSettings>,
    /// The HTTP API, when configured (`--http` or `[http]`).
    pub http: Option<HttpSettings>,
    /// Span export over OTLP, when `[otel]` is configured.
    pub otel: Option<OtelSettings>,
    /// Engine settings and default limits.
    pub runtime: RuntimeConfig,
    /// Policy for plugins without their own table.
    pub policy: Policy,
    /// Per-plugin tables.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// How long in-flight jobs get to finish on shutdown.
    pub drain_timeout: Duration,
    /// How often an idle pump looks for rows posted by other processes.
    pub poll_interval: Duration,
    /// Succeeded, expired and cancelled jobs are pruned after this.
    pub retention: Duration,
    /// A plugin file that compiles for longer is rejected (a compile bomb
    /// cannot hold up the start or other reloads).
    pub compile_timeout: Duration,
}

impl Config {
    /// Reads the file named in `overrides` (if any), applies the flags, and
    /// validates the result.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = match &overrides.config_file {
            Some(path) => read_file(path)?,
            None => RawFile::default(),
        };
        build(raw, overrides)
    }

    /// The policy for the plugin named `name`.
    pub fn policy_for(&self, name: &str) -> Policy {
        self.plugins.get(name).map_or(self.policy, |p| p.policy)
    }

    /// The sandbox ceiling of the plugin named `name`: its `[plugin.NAME]`
    /// limits, else `[limits]`.
    pub fn ceiling_for(&self, name: &str) -> Limits {
        self.plugins
            .get(name)
            .map_or(self.runtime.ceiling, |p| p.ceiling)
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("sluice.db")
    }
}

fn read_file(path: &Path) -> Result<RawFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string().trim_end().replace('\n', " "),
    })
}

fn build(raw: RawFile, overrides: &Overrides) -> Result<Config, ConfigError> {
    let defaults = RuntimeConfig::default();
    let raw_limits = LimitsSpec {
        fuel: raw.limits.fuel,
        memory_bytes: raw.limits.memory.map(|b| b.0),
        timeout_ms: raw.limits.timeout.map(duration_ms),
    };
    let limits = ceiling(defaults.ceiling, raw_limits);
    check_limits("[limits]", &raw_limits)?;
    let base = Policy::default();
    let p = &raw.policy;
    if p.fuel.is_some() || p.memory.is_some() || p.timeout.is_some() {
        return Err(ConfigError::Invalid(
            "[policy]: fuel, memory and timeout are sandbox limits: put them in [limits]".into(),
        ));
    }
    let policy = merge_policy(base, p);
    check_policy("[policy]", &policy)?;
    let calls = raw.sandbox.calls.unwrap_or(defaults.max_instances);
    if calls == 0 || calls > MAX_CALLS {
        return Err(ConfigError::Invalid(format!(
            "[sandbox]: calls must be between 1 and {MAX_CALLS}, not {calls}"
        )));
    }
    let idle_release = bounded(
        "[sandbox]",
        "idle_release",
        raw.sandbox.idle_release.unwrap_or(defaults.idle_release),
        Duration::from_millis(100),
        DAY,
    )?;
    let mut plugins = BTreeMap::new();
    for (name, table) in &raw.plugin {
        let where_ = format!("[plugin.{name}]");
        let table_limits = LimitsSpec {
            fuel: table.fuel,
            memory_bytes: table.memory.map(|b| b.0),
            timeout_ms: table.timeout.map(duration_ms),
        };
        check_limits(&where_, &table_limits)?;
        let p = PluginConfig {
            policy: merge_policy(policy, table),
            ceiling: ceiling(limits, table_limits),
        };
        check_policy(&where_, &p.policy)?;
        plugins.insert(name.clone(), p);
    }
    // One pool slot must hold the largest memory any plugin may get.
    let max_memory = plugins
        .values()
        .map(|p| p.ceiling.memory_bytes)
        .fold(limits.memory_bytes, u64::max)
        .next_multiple_of(WASM_PAGE);
    let nats = nats_settings(raw.nats.as_ref(), overrides.nats_url.as_deref())?;
    let http = http_settings(raw.http.as_ref(), overrides)?;
    let otel = raw.otel.as_ref().map(otel_settings).transpose()?;
    let poll_interval = bounded(
        "",
        "poll_interval",
        raw.poll_interval.unwrap_or(Duration::from_millis(100)),
        MS,
        MINUTE,
    )?;
    let drain_timeout = bounded(
        "",
        "drain_timeout",
        raw.drain_timeout.unwrap_or(Duration::from_secs(30)),
        Duration::ZERO,
        DAY,
    )?;
    let compile_timeout = bounded(
        "",
        "compile_timeout",
        raw.compile_timeout.unwrap_or(MINUTE),
        Duration::from_millis(100),
        HOUR,
    )?;
    let retention = bounded(
        "",
        "retention",
        raw.retention.unwrap_or(7 * DAY),
        Duration::from_secs(1),
        10 * 365 * DAY,
    )?;
    Ok(Config {
        plugins_dir: overrides
            .plugins_dir
            .clone()
            .or(raw.plugins_dir)
            .unwrap_or_else(|| PathBuf::from("plugins")),
        data_dir: overrides
            .data_dir
            .clone()
            .or(raw.data_dir)
            .unwrap_or_else(|| PathBuf::from("sluice-data")),
        store: StoreOptions {
            synchronous: raw.store.synchronous.unwrap_or_default(),
            ..StoreOptions::default()
        },
        nats,
        http,
        otel,
        runtime: RuntimeConfig {
            ceiling: limits,
            max_memory_bytes: max_memory,
            max_instances: calls,
            idle_release,
            ..defaults
        },
        policy,
        plugins,
        drain_timeout,
        poll_interval,
        retention,
        compile_timeout,
    })
}

/// JetStream settings when a URL is given by flag or file.
fn nats_settings(
    raw: Option<&RawNats>,
    flag_url: Option<&str>,
) -> Result<Option<JetStreamSettings>, ConfigError> {
    let url = flag_url
        .map(str::to_owned)
        .or(raw.and_then(|r| r.url.clone()));
    let Some(url) = url else {
        if raw.is_some() {
            return Err(ConfigError::Invalid(
                "[nats]: url is missing (or pass --nats URL)".into(),
            ));
        }
        return Ok(None);
    };
    let d = JetStreamSettings::default();
    let raw = raw.cloned().unwrap_or_default();
    let s = JetStreamSettings {
        url,
        ack_wait: raw.ack_wait.unwrap_or(d.ack_wait),
        replicas: raw.replicas.unwrap_or(d.replicas),
        max_age: raw.max_age.unwrap_or(d.max_age),
        duplicate_window: raw.duplicate_window.unwrap_or(d.duplicate_window),
        fetch_wait: d.fetch_wait,
        shared_state: raw.shared_state.unwrap_or(d.shared_state),
    };
    bounded(
        "[nats]",
        "ack_wait",
        s.ack_wait,
        Duration::from_secs(1),
        12 * HOUR,
    )?;
    bounded(
        "[nats]",
        "max_age",
        s.max_age,
        Duration::ZERO,
        10 * 365 * DAY,
    )?;
    bounded(
        "[nats]",
        "duplicate_window",
        s.duplicate_window,
        Duration::from_secs(1),
        7 * DAY,
    )?;
    if !s.max_age.is_zero() && s.duplicate_window > s.max_age {
        return Err(ConfigError::Invalid(
            "[nats]: duplicate_window must not be above max_age".into(),
        ));
    }
    if !(1..=5).contains(&s.replicas) {
        return Err(ConfigError::Invalid(format!(
            "[nats]: replicas must be between 1 and 5, not {}",
            s.replicas
        )));
    }
    Ok(Some(s))
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawOtel {
    endpoint: Option<String>,
    service_name: Option<String>,
}

/// `[otel]`: where spans go. Only plain `http://`: the exporter is built
/// without TLS (send to a collector agent on the host or its network).
fn otel_settings(raw: &RawOtel) -> Result<OtelSettings, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(format!("[otel]: {m}"));
    let endpoint = raw
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| bad("endpoint is missing (e.g. \"http://127.0.0.1:4318\")".into()))?;
    let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
        bad(format!(
            "endpoint {endpoint:?} must be an http:// URL (OTLP/HTTP; this build has no TLS: \
             export to a collector over plain HTTP)"
        ))
    })?;
    if rest.is_empty() || rest.starts_with('/') || endpoint.parse::<axum::http::Uri>().is_err() {
        return Err(bad(format!(
            "endpoint {endpoint:?} is not a URL like http://host:4318"
        )));
    }
    let service_name = raw.service_name.clone().unwrap_or_else(|| "sluice".into());
    if service_name.is_empty()
        || service_name.len() > 255
        || service_name.chars().any(char::is_control)
    {
        return Err(bad(
            "service_name must be 1 to 255 characters, no control characters".into(),
        ));
    }
    Ok(OtelSettings {
        endpoint: endpoint.to_owned(),
        service_name,
    })
}

/// The HTTP API's settings when an address is given by flag or file.
fn http_settings(
    raw: Option<&RawHttp>,
    overrides: &Overrides,
) -> Result<Option<HttpSettings>, ConfigError> {
    let addr = overrides
        .http_addr
        .clone()
        .or(raw.and_then(|r| r.addr.clone()));
    let Some(addr) = addr else {
        if raw.is_some() {
            return Err(ConfigError::Invalid(
                "[http]: addr is missing (or pass --http ADDR)".into(),
            ));
        }
        return Ok(None);
    };
    let addr: std::net::SocketAddr = addr.trim().parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "http address {addr:?} is not IP:PORT (e.g. 127.0.0.1:8080)"
        ))
    })?;
    let token = overrides
        .http_token
        .clone()
        .or(raw.and_then(|r| r.token.clone()))
        .filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ConfigError::Invalid(format!(
            "[http]: a token is required to listen on {addr}, which is not a loopback address \
             (set [http] token or SLUICE_HTTP_TOKEN, or listen on 127.0.0.1)"
        )));
    }
    let body_limit = raw.and_then(|r| r.body_limit).map_or(1 << 20, |b| b.0);
    if body_limit == 0 || body_limit > MAX_BODY_LIMIT {
        return Err(ConfigError::Invalid(format!(
            "[http]: body_limit must be between 1 byte and {MAX_BODY_LIMIT} bytes (64 MiB), not {body_limit}"
        )));
    }
    let allowed_hosts = raw
        .and_then(|r| r.allowed_hosts.clone())
        .unwrap_or_default();
    if let Some(bad) = allowed_hosts
        .iter()
        .find(|h| h.trim().is_empty() || h.contains(['/', ' ', '@']) || h.len() > 255)
    {
        return Err(ConfigError::Invalid(format!(
            "[http]: allowed_hosts entry {bad:?} is not a host name or host:port"
        )));
    }
    Ok(Some(HttpSettings {
        addr,
        token,
        body_limit: usize::try_from(body_limit).unwrap_or(usize::MAX),
        allowed_hosts,
    }))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

const MS: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Largest `[http] body_limit`: a request body is held in memory whole.
const MAX_BODY_LIMIT: u64 = 64 << 20;

/// Most attempts a policy may give a job.
const MAX_ATTEMPTS: u32 = 10_000;

/// `d` if it lies in `min..=max`, else an error naming the key. Every
/// duration in the config goes through here, so none can overflow the
/// arithmetic it meets (`Instant + d`, milliseconds as i64, NATS's
/// nanoseconds).
fn bounded(
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
const WASM_PAGE: u64 = 64 * 1024;

/// `base` with the fields `set` gives replaced.
fn ceiling(base: Limits, set: LimitsSpec) -> Limits {
    Limits {
        fuel: set.fuel.unwrap_or(base.fuel),
        memory_bytes: set.memory_bytes.unwrap_or(base.memory_bytes),
        timeout_ms: set.timeout_ms.unwrap_or(base.timeout_ms),
    }
}

fn merge_policy(base: Policy, t: &RawPlugin) -> Policy {
    Policy {
        max_attempts: t.max_attempts.unwrap_or(base.max_attempts),
        backoff_initial: t.backoff_initial.unwrap_or(base.backoff_initial),
        backoff_max: t.backoff_max.unwrap_or(base.backoff_max),
        concurrency: t.concurrency.unwrap_or(base.concurrency),
        breaker_failures: t.breaker_failures.unwrap_or(base.breaker_failures),
        breaker_cooldown: t.breaker_cooldown.unwrap_or(base.breaker_cooldown),
    }
}

fn check_policy(where_: &str, p: &Policy) -> Result<(), ConfigError> {
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
fn check_limits(where_: &str, l: &LimitsSpec) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        build(raw, &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_without_a_file() -> Result<(), String> {
        let c = parse("")?;
        assert_eq!(c.plugins_dir, PathBuf::from("plugins"));
        assert_eq!(c.data_dir, PathBuf::from("sluice-data"));
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.store.synchronous, Synchronous::Full);
        Ok(())
    }

    #[test]
    fn plugin_tables_override_the_policy_and_limits() -> Result<(), String> {
        let c = parse(
            r#"
            [policy]
            max_attempts = 7
            backoff_initial = "50ms"
            [limits]
            memory = "32MiB"
            [plugin.task-reminder]
            max_attempts = 2
            timeout = "2s"
            "#,
        )?;
        assert_eq!(c.policy.max_attempts, 7);
        assert_eq!(c.runtime.ceiling.memory_bytes, 32 << 20);
        let p = c.policy_for("task-reminder");
        assert_eq!(p.max_attempts, 2);
        assert_eq!(
            p.backoff_initial,
            Duration::from_millis(50),
            "inherits [policy]"
        );
        let ceiling = c.ceiling_for("task-reminder");
        assert_eq!((ceiling.timeout_ms, ceiling.memory_bytes), (2000, 32 << 20));
        assert_eq!(c.ceiling_for("other"), c.runtime.ceiling);
        assert_eq!(c.policy_for("other").max_attempts, 7);
        Ok(())
    }

    #[test]
    fn the_call_budget_is_bounded_and_independent_of_concurrency() -> Result<(), String> {
        let c = parse("")?;
        let calls = c.runtime.max_instances;
        assert!((8..=64).contains(&calls), "{calls}");
        assert_eq!(parse("[sandbox]\ncalls = 3")?.runtime.max_instances, 3);
        for bad in ["0", "1025"] {
            let err = parse(&format!("[sandbox]\ncalls = {bad}"))
                .err()
                .unwrap_or_default();
            assert!(
                err.contains("[sandbox]: calls must be between 1 and 1024"),
                "{err}"
            );
        }
        assert_eq!(c.runtime.idle_release, Duration::from_secs(5));
        let c = parse("[sandbox]\nidle_release = \"250ms\"")?;
        assert_eq!(c.runtime.idle_release, Duration::from_millis(250));
        for bad in ["0s", "2days"] {
            let err = parse(&format!("[sandbox]\nidle_release = \"{bad}\""))
                .err()
                .unwrap_or_default();
            assert!(
                err.contains("[sandbox]: idle_release must be between 100ms and 1day"),
                "{err}"
            );
        }
        // More jobs in flight than calls: the rest wait for the budget.
        let c = parse("[sandbox]\ncalls = 2\n[policy]\nconcurrency = 4096")?;
        assert_eq!(c.policy.concurrency, 4096);
        let err = parse("[policy]\nconcurrency = 4097")
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("concurrency must be between 1 and 4096"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("max_attempt = 3").err().unwrap_or_default();
        assert!(err.contains("unknown field `max_attempt`"), "{err}");
        let err = parse(
            "[plugin.x]
fuell = 1",
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("unknown field `fuell`"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_errors() {
        let err = parse(
            "[policy]
max_attempts = 0",
        )
        .err()
        .unwrap_or_default();
        assert!(
            err.contains("[policy]: max_attempts must be at least 1"),
            "{err}"
        );
        let err = parse(
            "[plugin.p]
memory = \"100GiB\"",
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("[plugin.p]: memory"), "{err}");
        let err = parse(
            "[limits]
memory = \"12 parsecs\"",
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("unknown size unit"), "{err}");
        let err = parse(
            "[policy]
backoff_initial = \"10m\"
backoff_max = \"1m\"",
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("is above backoff_max"), "{err}");
    }

    #[test]
    fn every_duration_and_size_is_bounded() {
        let cases = [
            (
                "[policy]\nbreaker_cooldown = \"1000000000days\"",
                "[policy]: breaker_cooldown must be between",
            ),
            (
                "[plugin.p]\nbreaker_cooldown = \"2days\"",
                "[plugin.p]: breaker_cooldown",
            ),
            (
                "[policy]\nbackoff_max = \"30days\"",
                "backoff_max must be between",
            ),
            (
                "[policy]\nmax_attempts = 4000000000",
                "max_attempts must be at most",
            ),
            (
                "drain_timeout = \"1000000000days\"",
                "drain_timeout must be between",
            ),
            ("poll_interval = \"0s\"", "poll_interval must be between"),
            ("poll_interval = \"1h\"", "poll_interval must be between"),
            ("retention = \"0s\"", "retention must be between"),
            ("retention = \"1000000years\"", "retention must be between"),
            (
                "[nats]\nurl = \"nats://h\"\nack_wait = \"1000days\"",
                "ack_wait must be between",
            ),
            (
                "[nats]\nurl = \"nats://h\"\nmax_age = \"1000years\"",
                "max_age must be between",
            ),
            (
                "[nats]\nurl = \"nats://h\"\nduplicate_window = \"30days\"",
                "duplicate_window must be between",
            ),
            (
                "[nats]\nurl = \"nats://h\"\nmax_age = \"1m\"\nduplicate_window = \"2m\"",
                "not be above max_age",
            ),
            (
                "[http]\naddr = \"127.0.0.1:1\"\nbody_limit = \"1GiB\"",
                "body_limit must be between",
            ),
            ("[limits]\nmemory = 18446744073709551615", "hard maximum"),
            ("[limits]\nmemory = \"17179869184GiB\"", "too large"),
        ];
        for (text, want) in cases {
            let err = parse(text).err().unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn limits_are_bounded_by_hard_maxima_and_size_the_pool_slot() -> Result<(), String> {
        let err = parse("[limits]\nfuel = 18446744073709551615")
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("[limits]: fuel") && err.contains("hard maximum"),
            "{err}"
        );
        let err = parse("[plugin.p]\ntimeout = \"2days\"")
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("[plugin.p]: timeout") && err.contains("hard maximum"),
            "{err}"
        );
        let c = parse("[limits]\nmemory = \"16MiB\"\n[plugin.big]\nmemory = \"1000000\"")?;
        assert_eq!(c.runtime.ceiling.memory_bytes, 16 << 20);
        assert_eq!(c.runtime.max_memory_bytes, 16 << 20);
        let c = parse("[limits]\nmemory = \"16MiB\"\n[plugin.big]\nmemory = \"100000000\"")?;
        assert_eq!(c.ceiling_for("big").memory_bytes, 100_000_000);
        assert_eq!(
            c.runtime.max_memory_bytes, 100_007_936,
            "rounded up to 64 KiB pages"
        );
        Ok(())
    }

    #[test]
    fn nats_comes_from_the_file_or_the_flag() -> Result<(), String> {
        assert!(parse("")?.nats.is_none());
        let c = parse("[nats]\nurl = \"nats://h:4222\"\nack_wait = \"5s\"")?;
        let n = c.nats.ok_or("nats")?;
        assert_eq!(
            (n.url.as_str(), n.ack_wait),
            ("nats://h:4222", Duration::from_secs(5))
        );
        assert!(!n.shared_state, "off by default");
        let c = parse("[nats]\nurl = \"nats://h\"\nshared_state = true")?;
        assert!(c.nats.ok_or("nats")?.shared_state);
        let raw: RawFile = toml::from_str("").map_err(|e| e.to_string())?;
        let flag = Overrides {
            nats_url: Some("nats://x:1".into()),
            ..Overrides::default()
        };
        let c = build(raw, &flag).map_err(|e| e.to_string())?;
        assert_eq!(c.nats.map(|n| n.url), Some("nats://x:1".into()));
        let err = parse("[nats]\nack_wait = \"5s\"").err().unwrap_or_default();
        assert!(err.contains("url is missing"), "{err}");
        Ok(())
    }

    #[test]
    fn http_needs_a_token_off_loopback() -> Result<(), String> {
        assert!(parse("")?.http.is_none());
        let c = parse("[http]\naddr = \"127.0.0.1:8080\"")?;
        let h = c.http.ok_or("http")?;
        assert_eq!((h.token, h.body_limit), (None, 1 << 20));
        let err = parse("[http]\naddr = \"0.0.0.0:8080\"")
            .err()
            .unwrap_or_default();
        assert!(err.contains("a token is required"), "{err}");
        let c = parse("[http]\naddr = \"0.0.0.0:8080\"\ntoken = \"s\"\nbody_limit = \"4KiB\"")?;
        let h = c.http.ok_or("http")?;
        assert_eq!((h.token.as_deref(), h.body_limit), (Some("s"), 4096));
        let err = parse("[http]\naddr = \"localhost\"")
            .err()
            .unwrap_or_default();
        assert!(err.contains("is not IP:PORT"), "{err}");
        Ok(())
    }

    #[test]
    fn otel_needs_an_http_endpoint() -> Result<(), String> {
        assert!(parse("")?.otel.is_none(), "off by default");
        let c = parse("[otel]\nendpoint = \"http://127.0.0.1:4318\"")?;
        let o = c.otel.ok_or("otel")?;
        assert_eq!(
            (o.endpoint.as_str(), o.service_name.as_str()),
            ("http://127.0.0.1:4318", "sluice")
        );
        for (bad, says) in [
            ("[otel]", "endpoint is missing"),
            (
                "[otel]\nendpoint = \"https://x:4318\"",
                "must be an http:// URL",
            ),
            ("[otel]\nendpoint = \"http://\"", "is not a URL"),
            ("[otel]\nendpoint = \"http://a b\"", "is not a URL"),
            (
                "[otel]\nendpoint = \"http://x\"\nservice_name = \"\"",
                "service_name",
            ),
            (
                "[otel]\nendpoint = \"http://x\"\nsampler = 1",
                "unknown field",
            ),
        ] {
            let err = parse(bad).err().unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
        Ok(())
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert!(parse_bytes("MiB").is_err());
    }
}
