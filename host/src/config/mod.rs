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
//! shared_state = true            # plugin state is one store for every host
//!                                # (the SLUICE_STATE stream, nats-server 2.12+);
//!                                # false: each host's own SQLite
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
//!
//! [[cron]]                       # a recurring message (any number of these)
//! name = "nightly-report"        # unique; the plugin-name rule
//! schedule = "0 3 * * *"         # 5 fields, or 6 with seconds first, or @daily...
//! time_zone = "Europe/Berlin"    # IANA name; default "UTC"
//! channel = "reports"            # must be served by a loaded handler at start
//! body = '{"kind":"nightly"}'    # default empty
//! headers = { x-team = "ops" }   # optional
//! kind = "command"               # or "event"
//! missed = "once"                # or "skip": see crate::cron
//! deadline = "1m"                # later than this after its instant: missed
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod bounds;
mod flow;
mod raw;
mod sections;

use crate::runtime::{Limits, LimitsSpec, RuntimeConfig};
use crate::store::StoreOptions;
use crate::telemetry::OtelSettings;
use crate::transport::JetStreamSettings;
use bounds::{
    DAY, HOUR, MINUTE, MS, WASM_PAGE, bounded, ceiling, check_limits, check_policy, duration_ms,
    merge_policy,
};
use raw::RawFile;
pub use sections::HttpSettings;
use sections::{cron_entries, http_settings, nats_settings, otel_settings};

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

/// Most sandboxed calls at once a host may be configured for (`[sandbox]
/// calls`): each is an instance pool slot, with its virtual memory
/// reservation.
pub const MAX_CALLS: u32 = 1024;

/// Most jobs one pump may hold at once (`concurrency`).
pub const MAX_CONCURRENCY: usize = 4096;

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
    /// Per-handler flow rules (`crate::flow`), for handlers that set any.
    pub flows: BTreeMap<String, crate::flow::FlowSpec>,
    /// How long in-flight jobs get to finish on shutdown.
    pub drain_timeout: Duration,
    /// How often an idle pump looks for rows posted by other processes.
    pub poll_interval: Duration,
    /// Succeeded, expired and cancelled jobs are pruned after this.
    pub retention: Duration,
    /// A plugin file that compiles for longer is rejected (a compile bomb
    /// cannot hold up the start or other reloads).
    pub compile_timeout: Duration,
    /// Recurring messages (`[[cron]]`).
    pub cron: Vec<crate::cron::CronEntry>,
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

    /// The flow rules of the handler named `name`, if it has any.
    pub fn flow_for(&self, name: &str) -> Option<&crate::flow::FlowSpec> {
        self.flows.get(name)
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
    if flow::any(p) {
        return Err(ConfigError::Invalid(
            "[policy]: concurrency_key, per_key_concurrency, rate, rate_burst and rate_key are per handler: put them in [plugin.NAME]".into(),
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
    let mut flows = BTreeMap::new();
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
        let spec = flow::spec(&where_, table)?;
        if spec.is_set() {
            flows.insert(name.clone(), spec);
        }
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
    let cron = cron_entries(&raw.cron)?;
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
        flows,
        drain_timeout,
        poll_interval,
        retention,
        compile_timeout,
        cron,
    })
}

#[cfg(test)]
mod tests;
