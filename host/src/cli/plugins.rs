//! `sluice plugins` and `sluice send`.
//!
//! `sluice send` and `sluice plugins --check` load the plugins directory in
//! this process. Plain `sluice plugins` shows what the running daemon
//! serves, from the view it records in its database (with hot reload, a
//! file on disk may have been rejected while the version loaded from it
//! before keeps serving, which only the daemon knows); with no daemon
//! running it loads the directory like `--check`.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::message::{Message, MessageKind, new_id};
use crate::pump::{self, MapError, StoreState};
use crate::registry::{self, PluginSet};
use crate::reload;
use crate::runtime::{JobContext, Limits, LimitsSpec, Outcome, Runtime};
use crate::store::Store;

/// `sluice plugins` arguments.
#[derive(Debug, Args)]
pub struct PluginsArgs {
    /// One JSON object per file.
    #[arg(long)]
    pub json: bool,
    /// Load and validate the plugins directory here, even if a daemon is
    /// running (what a new daemon would load).
    #[arg(long)]
    pub check: bool,
}

/// `sluice send` arguments.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Channel whose handler(s) to run.
    pub channel: String,
    /// Message body (JSON unless the channel's mapper says otherwise).
    pub body: String,
    /// command or event.
    #[arg(long, default_value = "command", value_parser = ["command", "event"])]
    pub kind: String,
}

async fn load(config: &Config) -> anyhow::Result<PluginSet> {
    // Use the daemon's compile cache if there is one; never create a data
    // dir just for it.
    let runtime = if config.data_dir.is_dir() {
        Runtime::with_cache(config.runtime.clone(), reload::cache_dir(config))?
    } else {
        Runtime::new(config.runtime.clone())?
    };
    registry::load_dir(&runtime, config, &config.plugins_dir)
        .await
        .map_err(anyhow::Error::msg)
}

/// Whether a daemon holds the data directory. Probes its lock with a
/// shared lock released at once (a daemon starting in that microsecond
/// would be told the directory is in use, and can simply be started again).
fn daemon_running(config: &Config) -> bool {
    let Ok(file) = std::fs::File::open(config.data_dir.join("sluice.lock")) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

pub(super) async fn list(config: &Config, args: PluginsArgs) -> anyhow::Result<()> {
    if !args.check && daemon_running(config) && config.database_path().exists() {
        return list_daemon(config, &args).await;
    }
    let set = load(config).await?;
    let plugins = set.handlers.values().chain(set.mappers.values());
    let mut seen = std::collections::BTreeSet::new();
    let mut any_capped = false;
    if !args.json {
        print_header();
    }
    for (path, status) in &set.files {
        let Some(name) = status.name() else {
            continue;
        };
        let Some(p) = plugins.clone().find(|p| p.info().name == name) else {
            continue;
        };
        if !seen.insert(name) {
            continue;
        }
        let info = p.info();
        let limits = p.limits();
        if args.json {
            let v = serde_json::json!({
                "file": path, "name": info.name, "version": info.version, "kind": info.kind,
                "channels": info.channels, "limits": limits, "asked": info.limits,
                "hash": p.hash(),
            });
            println!("{v}");
        } else {
            any_capped |= print_row(
                &info.name,
                &info.version,
                info.kind.as_str(),
                &info.channels,
                (limits, info.limits),
                p.hash(),
                &path.display().to_string(),
            );
        }
    }
    if any_capped {
        println!("{CAPPED_NOTE}");
    }
    let errors = set.errors();
    for (path, error) in &errors {
        if args.json {
            println!("{}", serde_json::json!({"file": path, "error": error}));
        } else {
            eprintln!("error: {}: {error}", path.display());
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} plugin file{} in {} could not be loaded",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" },
            config.plugins_dir.display()
        );
    }
    Ok(())
}

/// `sluice plugins` from the running daemon's recorded view.
async fn list_daemon(config: &Config, args: &PluginsArgs) -> anyhow::Result<()> {
    let store = super::open_store(config)?;
    let files = store.plugin_files().await?;
    if !args.json {
        print_header();
    }
    let mut errors = 0;
    let mut any_capped = false;
    for f in &files {
        let limits = f.serving.as_ref().map(|p| {
            let in_force = Limits {
                fuel: p.fuel,
                memory_bytes: p.memory_bytes,
                timeout_ms: p.timeout_ms,
            };
            let asked = LimitsSpec {
                fuel: p.asked_fuel,
                memory_bytes: p.asked_memory_bytes,
                timeout_ms: p.asked_timeout_ms,
            };
            (in_force, asked)
        });
        if args.json {
            // The shape of the `--check` listing, plus the error of a file
            // whose older version keeps serving.
            let mut v = serde_json::json!({"file": f.path, "source": "daemon"});
            if let (Some(p), Some(limits)) = (&f.serving, limits) {
                v["name"] = p.name.clone().into();
                v["version"] = p.version.clone().into();
                v["kind"] = p.kind.clone().into();
                v["channels"] = p.channels.clone().into();
                v["limits"] = serde_json::to_value(limits.0)?;
                v["asked"] = serde_json::to_value(limits.1)?;
                v["hash"] = p.hash.clone().into();
                v["loaded_at"] = p.loaded_at.into();
            }
            if let Some(e) = &f.error {
                v["error"] = e.clone().into();
            }
            println!("{v}");
        } else if let (Some(p), Some(limits)) = (&f.serving, limits) {
            any_capped |= print_row(
                &p.name,
                &p.version,
                &p.kind,
                &p.channels,
                limits,
                &p.hash,
                &f.path,
            );
        }
        if let Some(error) = &f.error {
            errors += 1;
            if !args.json {
                match &f.serving {
                    Some(p) => eprintln!(
                        "error: {}: {error} (still serving {} {} loaded from it before)",
                        f.path, p.name, p.version
                    ),
                    None => eprintln!("error: {}: {error}", f.path),
                }
            }
        }
    }
    if any_capped {
        println!("{CAPPED_NOTE}");
    }
    if !args.json {
        eprintln!(
            "(served by the running daemon on {}; `sluice plugins --check` loads the directory here instead)",
            config.data_dir.display()
        );
    }
    if errors > 0 {
        bail!(
            "{errors} plugin file{} rejected by the running daemon",
            if errors == 1 { " was" } else { "s were" }
        );
    }
    Ok(())
}

/// After the table: what a `*` means.
const CAPPED_NOTE: &str =
    "(* the plugin asked for more; the operator's ceiling applies: --json shows the ask)";

fn print_header() {
    println!(
        "{:<24}  {:<10}  {:<7}  {:<30}  {:>13}  {:>9}  {:>8}  {:<12}  FILE",
        "NAME", "VERSION", "KIND", "CHANNELS", "FUEL", "MEMORY", "TIMEOUT", "HASH"
    );
}

/// One plugin's line. Returns whether a limit was capped (marked `*`).
fn print_row(
    name: &str,
    version: &str,
    kind: &str,
    channels: &[String],
    (limits, asked): (Limits, LimitsSpec),
    hash: &str,
    file: &str,
) -> bool {
    let capped = limits.capped(asked);
    let mark = |field: &str| if capped.contains(&field) { "*" } else { " " };
    println!(
        "{:<24}  {:<10}  {:<7}  {:<30}  {:>13}{}  {:>8}M{}  {:>6}ms{}  {:<12}  {}",
        name,
        version,
        kind,
        channels.join(","),
        limits.fuel,
        mark("fuel"),
        limits.memory_bytes >> 20,
        mark("memory"),
        limits.timeout_ms,
        mark("timeout"),
        hash.get(..12).unwrap_or(hash),
        file
    );
    !capped.is_empty()
}

pub(super) async fn send(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    let set = load(config).await?;
    let handlers = set.handlers_of(&args.channel);
    if handlers.is_empty() {
        bail!(
            "no handler for channel {:?} in {}",
            args.channel,
            config.plugins_dir.display()
        );
    }
    let store = Store::open(&config.database_path(), &config.store).with_context(|| {
        format!(
            "opening {} for plugin state",
            config.database_path().display()
        )
    })?;
    let message = Message {
        id: new_id(),
        channel: args.channel.clone(),
        kind: MessageKind::parse(&args.kind).unwrap_or_default(),
        headers: Vec::new(),
        body: args.body.into_bytes(),
    };
    let request = match pump::to_request(&set, &message, 1).await {
        Ok(r) => r,
        Err(MapError::Poison(reason) | MapError::Fault(reason)) => bail!("{reason}"),
    };
    let mut failed = 0;
    for handler in handlers {
        let info = handler.info();
        let ctx = JobContext {
            job_id: new_id(),
            message_id: message.id.clone(),
            channel: message.channel.clone(),
            attempt: 1,
            headers: message.headers.clone(),
            cursor: None,
        };
        let report = handler
            .handle(
                ctx,
                request.clone(),
                Arc::new(StoreState(store.clone())),
                CancellationToken::new(),
            )
            .await;
        let mut out = serde_json::json!({
            "handler": info.name, "version": info.version,
            "fuel_used": report.fuel_used,
            "duration_ms": report.duration.as_secs_f64() * 1000.0,
        });
        match &report.result {
            Ok(outcome) => {
                let posts =
                    pump::to_messages(&set, &report.effects.posts, &message, &info.name, None)
                        .await
                        .map_err(anyhow::Error::msg)?;
                out["outcome"] = match outcome {
                    Outcome::Done { result } => serde_json::json!({"done": result_json(result)}),
                    Outcome::Continue { cursor, delay_ms } => {
                        serde_json::json!({"continue": {"cursor": cursor, "delay_ms": delay_ms}})
                    }
                };
                out["effects"] = serde_json::json!({
                    "posts": posts.iter().map(|p| serde_json::json!({
                        "channel": p.message.channel, "kind": p.message.kind,
                        "headers": p.message.headers,
                        "body": String::from_utf8_lossy(&p.message.body),
                        "visible_at": p.visible_at, "expires_at": p.expires_at,
                    })).collect::<Vec<_>>(),
                    "progress": report.effects.progress,
                    "state_writes": report.effects.state_writes.iter().map(|(k, v)| {
                        (k.clone(), v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()).into())
                    }).collect::<serde_json::Map<String, serde_json::Value>>(),
                });
            }
            Err(failure) => {
                failed += 1;
                out["error"] = failure.to_string().into();
            }
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if failed > 0 {
        bail!(
            "{failed} handler call{} failed",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// A result that is JSON is shown as JSON, anything else as a string.
fn result_json(result: &Option<String>) -> serde_json::Value {
    match result {
        None => serde_json::Value::Null,
        Some(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
    }
}
