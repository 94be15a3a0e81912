//! `sluice plugins`.
//!
//! `sluice plugins --check` (and `sluice send`) load the plugins directory in
//! this process. Plain `sluice plugins` shows what the running daemon
//! serves, from the view it records in its database (with hot reload, a
//! file on disk may have been rejected while the version loaded from it
//! before keeps serving, which only the daemon knows); with no daemon
//! running it loads the directory like `--check`.

use anyhow::bail;
use clap::Args;

use crate::config::Config;
use crate::registry::{self, PluginSet};
use crate::reload;
use crate::runtime::{Limits, LimitsSpec, Runtime};

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

/// A runtime for commands that load plugins in this process. It uses the
/// daemon's compile cache if there is one, and never creates a data dir
/// just for it.
pub(super) fn runtime(config: &Config) -> anyhow::Result<Runtime> {
    Ok(if config.data_dir.is_dir() {
        Runtime::with_cache(config.runtime.clone(), reload::cache_dir(config))?
    } else {
        Runtime::new(config.runtime.clone())?
    })
}

/// Loads the plugins directory in this process.
pub(super) async fn load(config: &Config) -> anyhow::Result<PluginSet> {
    let runtime = runtime(config)?;
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
