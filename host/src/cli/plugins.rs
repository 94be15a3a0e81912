//! `sluice plugins` and `sluice send`: load the plugins directory in-process.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::message::{Message, MessageKind, new_id};
use crate::pump::{self, MapError, StoreState};
use crate::registry::{self, FileStatus, PluginSet};
use crate::runtime::{JobContext, Outcome, Runtime};
use crate::store::Store;

/// `sluice plugins` arguments.
#[derive(Debug, Args)]
pub struct PluginsArgs {
    /// One JSON object per file.
    #[arg(long)]
    pub json: bool,
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
    let runtime = Runtime::new(config.runtime.clone())?;
    registry::load_dir(&runtime, config, &config.plugins_dir)
        .await
        .map_err(anyhow::Error::msg)
}

pub(super) async fn list(config: &Config, args: PluginsArgs) -> anyhow::Result<()> {
    let set = load(config).await?;
    let plugins = set.handlers.values().chain(set.mappers.values());
    let mut seen = std::collections::BTreeSet::new();
    if !args.json {
        println!(
            "{:<24}  {:<10}  {:<7}  {:<30}  {:>13}  {:>9}  {:>8}  {:<12}  FILE",
            "NAME", "VERSION", "KIND", "CHANNELS", "FUEL", "MEMORY", "TIMEOUT", "HASH"
        );
    }
    for (path, status) in &set.files {
        let FileStatus::Loaded { name } = status else {
            continue;
        };
        let Some(p) = plugins.clone().find(|p| &p.info().name == name) else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        let info = p.info();
        let limits = p.limits();
        if args.json {
            let v = serde_json::json!({
                "file": path, "name": info.name, "version": info.version, "kind": info.kind,
                "channels": info.channels, "limits": limits, "hash": p.hash(),
            });
            println!("{v}");
        } else {
            println!(
                "{:<24}  {:<10}  {:<7}  {:<30}  {:>13}  {:>8}M  {:>6}ms  {:<12}  {}",
                info.name,
                info.version,
                info.kind.as_str(),
                info.channels.join(","),
                limits.fuel,
                limits.memory_bytes >> 20,
                limits.timeout_ms,
                &p.hash()[..12.min(p.hash().len())],
                path.display()
            );
        }
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
