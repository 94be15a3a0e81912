//! `sluice send`: run a channel's handler(s) once, in this process, and show
//! what the call would commit. Nothing is queued and nothing is written: it
//! is how a plugin author tries a plugin by hand, without a daemon.
//!
//! The message goes through the same steps as in a pump (the channel's
//! mapper or JSON passthrough, the sandboxed call with the plugin's limits,
//! the target channels' mappers for each post), so what `send` shows is what
//! a daemon would record. State reads see the committed state where the
//! config keeps it: with `[nats] shared_state`, the store every host shares
//! (the `SLUICE_STATE` stream); else the data dir's database if there is
//! one, and an empty state otherwise (`send` never creates a data dir). Output: a table per handler for people, or one JSON
//! object per handler per line with `--json`, for scripts and tests.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::message::{Headers, Message, MessageKind, new_id, now_ms};
use crate::pump;
use crate::registry::{self, PluginSet};
use crate::runtime::{
    CallFailure, CallReport, JobContext, Outcome, PluginInfo, StateFuture, StateSource,
};
use crate::state::{Committed, Remote, SharedCommitted};
use crate::store::{NewMessage, Store};

/// Longest value shown in a table cell; `--json` shows everything.
const CELL: usize = 100;

/// `sluice send` arguments.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Channel whose handler(s) to run.
    pub channel: String,
    /// Message body (JSON unless the channel's mapper says otherwise); `-`
    /// reads it from stdin.
    pub body: String,
    /// command or event.
    #[arg(long, default_value = "command", value_parser = ["command", "event"])]
    pub kind: String,
    /// Header, repeatable: `--header key=value`.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Run as a continuation slice with this cursor (what the handler sees
    /// in `ctx.cursor()`).
    #[arg(long)]
    pub cursor: Option<String>,
    /// The attempt number the handler sees (1 = first delivery).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: u32,
    /// Load this plugin file (repeatable) instead of the plugins directory,
    /// e.g. `target/wasm32-wasip2/release/my_plugin.wasm`.
    #[arg(long = "plugin", value_name = "FILE")]
    pub plugin_files: Vec<PathBuf>,
    /// One JSON object per handler, on one line each.
    #[arg(long)]
    pub json: bool,
}

/// Parses `--header key=value` arguments.
pub(super) fn parse_headers(args: &[String]) -> anyhow::Result<Headers> {
    let headers = args
        .iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) if !k.is_empty() => match crate::message::check_header(k, v) {
                Ok(()) => Ok((k.to_owned(), v.to_owned())),
                Err(reason) => bail!("--header {h:?}: {reason}"),
            },
            _ => bail!("--header {h:?} is not KEY=VALUE"),
        })
        .collect::<anyhow::Result<Headers>>()?;
    if let Err(reason) = crate::message::options::check_all(&headers) {
        bail!("--header: {reason}");
    }
    Ok(headers)
}

pub(super) async fn run(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    crate::names::check_channel(&args.channel)?;
    let headers = parse_headers(&args.headers)?;
    let body = if args.body == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the body from stdin")?;
        buf
    } else {
        args.body.clone().into_bytes()
    };
    let set = if args.plugin_files.is_empty() {
        super::plugins::load(config).await?
    } else {
        load_files(config, &args.plugin_files).await?
    };
    let handlers = set.handlers_of(&args.channel);
    if handlers.is_empty() {
        let served: Vec<String> = set
            .handlers
            .values()
            .flat_map(|p| p.info().channels.clone())
            .collect();
        bail!(
            "no handler for channel {:?} in {} (channels served there: {})",
            args.channel,
            source_name(config, &args.plugin_files),
            if served.is_empty() {
                "none".to_owned()
            } else {
                served.join(", ")
            }
        );
    }
    let shared = shared_state(config).await?;
    let store = match shared {
        Some(_) => None,
        None => committed_state(config)?,
    };
    let message = Message {
        id: new_id(),
        channel: args.channel.clone(),
        kind: MessageKind::parse(&args.kind).unwrap_or_default(),
        headers,
        body,
    };
    let request = match pump::to_request(&set, &message, args.attempt).await {
        Ok(r) => r,
        Err(e) => bail!("{e}"),
    };
    let mut failed = 0;
    for (i, handler) in handlers.into_iter().enumerate() {
        let info = handler.info().clone();
        let ctx = JobContext {
            job_id: new_id(),
            message_id: message.id.clone(),
            channel: message.channel.clone(),
            attempt: args.attempt,
            headers: message.headers.clone(),
            cursor: args.cursor.clone(),
        };
        let report = handler
            .handle(
                ctx,
                request.clone(),
                state_of(shared.as_ref(), store.as_ref(), &info.name),
                CancellationToken::new(),
            )
            .await;
        let posts = match &report.result {
            Ok(_) => pump::to_messages(
                &set,
                &report.effects.posts,
                &message,
                &info.name,
                args.cursor.as_deref(),
            )
            .await
            .map_err(anyhow::Error::msg)?,
            Err(_) => {
                failed += 1;
                Vec::new()
            }
        };
        let shown = Shown {
            info: &info,
            report: &report,
            posts: &posts,
            now: now_ms(),
        };
        if args.json {
            println!("{}", shown.json());
        } else {
            if i > 0 {
                println!();
            }
            print!("{}", shown.table());
        }
    }
    if failed > 0 {
        bail!(
            "{failed} handler call{} failed",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn source_name(config: &Config, files: &[PathBuf]) -> String {
    if files.is_empty() {
        config.plugins_dir.display().to_string()
    } else {
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `--plugin FILE...`: exactly these files, each of which must load.
async fn load_files(config: &Config, files: &[PathBuf]) -> anyhow::Result<PluginSet> {
    let runtime = super::plugins::runtime(config)?;
    let mut entries = Vec::with_capacity(files.len());
    for path in files {
        let plugin = registry::load_file(&runtime, config, path)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        entries.push(registry::Entry {
            path: path.clone(),
            plugin: Some(plugin),
            error: None,
        });
    }
    let set = registry::compose(&entries);
    if let Some((path, error)) = set.errors().first() {
        bail!("{}: {error}", path.display());
    }
    Ok(set)
}

/// The data dir's store when it has a database (for committed state);
/// `None` otherwise, so trying a plugin creates nothing.
fn committed_state(config: &Config) -> anyhow::Result<Option<Store>> {
    let path = config.database_path();
    if !path.exists() {
        return Ok(None);
    }
    let store = Store::open(&path, &config.store)
        .with_context(|| format!("opening {} for plugin state", path.display()))?;
    Ok(Some(store))
}

/// The store every host shares, when the config says state lives there.
async fn shared_state(config: &Config) -> anyhow::Result<Option<Arc<dyn Remote>>> {
    let Some(nats) = config.nats.as_ref().filter(|n| n.shared_state) else {
        return Ok(None);
    };
    let remote = crate::transport::SharedState::connect(nats)
        .await
        .context("reading plugin state from the shared store ([nats] shared_state)")?;
    Ok(Some(remote))
}

/// `plugin`'s committed state, read without turns (nothing is committed):
/// from the shared store, or this host's.
fn state_of(
    shared: Option<&Arc<dyn Remote>>,
    store: Option<&Store>,
    plugin: &str,
) -> Arc<dyn StateSource> {
    match (shared, store) {
        (Some(remote), _) => Arc::new(SharedCommitted {
            remote: remote.clone(),
            plugin: plugin.to_owned(),
        }),
        (None, Some(store)) => Arc::new(Committed {
            store: store.clone(),
            plugin: plugin.to_owned(),
        }),
        (None, None) => Arc::new(NoState),
    }
}

/// No database: every key is absent.
struct NoState;

impl StateSource for NoState {
    fn get(&self, _key: &str) -> StateFuture<'_> {
        Box::pin(async { Ok((None, 0)) })
    }
}

/// One handler call, ready to print.
struct Shown<'a> {
    info: &'a PluginInfo,
    report: &'a CallReport,
    /// The posts as wire messages (through their channels' mappers).
    posts: &'a [NewMessage],
    now: i64,
}

impl Shown<'_> {
    fn json(&self) -> Value {
        let r = self.report;
        let mut out = json!({
            "handler": self.info.name, "version": self.info.version,
            "fuel_used": r.fuel_used,
            "duration_ms": r.duration.as_secs_f64() * 1000.0,
        });
        match &r.result {
            Ok(outcome) => {
                out["outcome"] = match outcome {
                    Outcome::Done { result } => json!({"done": result_json(result)}),
                    Outcome::Continue { cursor, delay_ms } => {
                        json!({"continue": {"cursor": cursor, "delay_ms": delay_ms}})
                    }
                };
                out["effects"] = json!({
                    "posts": self.posts.iter().map(|p| json!({
                        "channel": p.message.channel, "kind": p.message.kind,
                        "headers": p.message.headers,
                        "body": String::from_utf8_lossy(&p.message.body),
                        "visible_at": p.visible_at, "expires_at": p.expires_at,
                    })).collect::<Vec<_>>(),
                    "progress": r.effects.progress,
                    "state_writes": r.effects.state_writes.iter().map(|(k, v)| {
                        (k.clone(), v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()).into())
                    }).collect::<serde_json::Map<String, Value>>(),
                    "state_adds": r.effects.state_adds,
                });
            }
            Err(failure) => {
                out["error"] = failure.to_string().into();
                out["error_kind"] = failure_kind(failure).into();
            }
        }
        out
    }

    fn table(&self) -> String {
        let r = self.report;
        let mut s = String::new();
        let outcome = match &r.result {
            Ok(Outcome::Done { .. }) => "done".to_owned(),
            Ok(Outcome::Continue { cursor, delay_ms }) => {
                format!("continue at cursor {} after {delay_ms} ms", cell(cursor))
            }
            // Guest errors and host errors name their kind already.
            Err(f @ CallFailure::Trap(_)) => format!("FAILED (trap): {}", cell(&f.to_string())),
            Err(f) => format!("FAILED: {}", cell(&f.to_string())),
        };
        let _ = writeln!(s, "{} {}: {outcome}", self.info.name, self.info.version);
        let _ = writeln!(
            s,
            "  {:.2} ms, {} fuel",
            r.duration.as_secs_f64() * 1000.0,
            r.fuel_used
        );
        match &r.result {
            Err(f) => {
                let _ = writeln!(
                    s,
                    "  {}; a failed call commits no effects",
                    match f {
                        CallFailure::Permanent(_) => "the message would be dead-lettered at once",
                        _ => "the message would be retried with backoff",
                    }
                );
                return s;
            }
            Ok(Outcome::Done {
                result: Some(result),
            }) => {
                let _ = writeln!(s, "  result: {}", cell(result));
            }
            Ok(_) => {}
        }
        let e = &r.effects;
        if let Some(p) = &e.progress {
            let note = p.note.as_deref().map(cell).unwrap_or_default();
            let _ = writeln!(s, "  progress: {}% {note}", p.percent);
        }
        if self.posts.is_empty() && e.state_writes.is_empty() && e.state_adds.is_empty() {
            let _ = writeln!(s, "  no posts, no state writes");
            return s;
        }
        if !self.posts.is_empty() {
            let rows = self.posts.iter().map(|p| {
                let headers: Vec<String> = p
                    .message
                    .headers
                    .iter()
                    // Every post carries it; it says nothing here.
                    .filter(|(k, _)| k != pump::CAUSATION_HEADER)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                vec![
                    cell(&p.message.channel),
                    p.message.kind.as_str().to_owned(),
                    when(p.visible_at, self.now),
                    p.expires_at.map_or("-".into(), |e| when(e, self.now)),
                    if headers.is_empty() {
                        "-".into()
                    } else {
                        cell(&headers.join(" "))
                    },
                    cell(&String::from_utf8_lossy(&p.message.body)),
                ]
            });
            s += &table(
                &["POST TO", "KIND", "SENT", "EXPIRES", "HEADERS", "BODY"],
                rows,
            );
        }
        if !e.state_writes.is_empty() {
            let rows = e.state_writes.iter().map(|(k, v)| match v {
                Some(v) => vec![cell(k), cell(&String::from_utf8_lossy(v))],
                None => vec![cell(k), "(deleted)".into()],
            });
            s += &table(&["STATE KEY", "NEW VALUE"], rows);
        }
        if !e.state_adds.is_empty() {
            let rows = e
                .state_adds
                .iter()
                .map(|(k, d)| vec![cell(k), format!("{d:+}")]);
            s += &table(&["STATE KEY", "ADD"], rows);
        }
        s
    }
}

/// An indented table with columns as wide as their widest cell.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in &rows {
        let mut line = String::from(" ");
        for (i, c) in row.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            line.push(' ');
            line += c;
            if i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', pad + 1));
            }
        }
        s += &line;
        s.push('\n');
    }
    s
}

/// One line, printable, at most [`CELL`] characters: whatever a plugin put
/// in a value cannot break the table or the terminal. Only control
/// characters are escaped (`escape_debug` would also escape the quotes JSON
/// bodies are full of).
fn cell(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    if escaped.chars().count() <= CELL {
        return escaped;
    }
    let mut cut: String = escaped.chars().take(CELL - 1).collect();
    cut.push('…');
    cut
}

/// "at commit", or how long after it.
fn when(at_ms: i64, now_ms: i64) -> String {
    let ms = at_ms.saturating_sub(now_ms);
    if ms <= 0 {
        return "at commit".into();
    }
    let d = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    // Whole seconds past a second: "in 1m 30s", not "in 1m 29s 998ms".
    let d = if d.as_secs() >= 1 {
        std::time::Duration::from_secs(d.as_secs_f64().round() as u64)
    } else {
        d
    };
    format!("in {}", humantime::format_duration(d))
}

fn failure_kind(f: &CallFailure) -> &'static str {
    match f {
        CallFailure::Retryable(_) => "retryable",
        CallFailure::Permanent(_) => "permanent",
        CallFailure::Trap(_) => "trap",
        CallFailure::Host(_) | CallFailure::StateWait { .. } => "host",
    }
}

/// A result that is JSON is shown as JSON, anything else as a string.
fn result_json(result: &Option<String>) -> Value {
    match result {
        None => Value::Null,
        Some(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_stay_on_one_line_and_short() {
        assert_eq!(cell("a\nb\tc\u{1b}[31m"), "a\\nb\\tc\\u{1b}[31m");
        assert_eq!(cell(r#"{"a":"b"}"#), r#"{"a":"b"}"#);
        assert_eq!(cell("é✓"), "é✓");
        let long = "x".repeat(500);
        assert_eq!(cell(&long).chars().count(), CELL);
        assert!(cell(&long).ends_with('…'));
    }

    #[test]
    fn tables_align_columns_by_characters() {
        let t = table(
            &["A", "B"],
            vec![
                vec!["é".to_owned(), "1".to_owned()],
                vec!["xyz".into(), "2".into()],
            ]
            .into_iter(),
        );
        assert_eq!(t, "  A    B\n  é    1\n  xyz  2\n");
    }

    #[test]
    fn when_is_relative_to_now() {
        assert_eq!(when(1_000, 2_000), "at commit");
        assert_eq!(when(2_000, 2_000), "at commit");
        assert_eq!(when(92_000, 2_000), "in 1m 30s");
        assert_eq!(when(2_250, 2_000), "in 250ms");
    }
}
