//! `sluice post`: queue wire messages from the command line or stdin.

use std::io::BufRead;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::config::Config;
use crate::message::{Message, MessageKind, new_id, now_ms};
use crate::store::{NewMessage, Published};
use crate::telemetry;

/// How many stdin lines go into one store transaction.
const CHUNK: usize = 1000;

/// `sluice post` arguments.
#[derive(Debug, Args)]
pub struct PostArgs {
    /// Channel to post to.
    pub channel: String,
    /// Message body (JSON). Omit it, or pass `-`, to read one message per
    /// line from stdin.
    pub body: Option<String>,
    /// command (one handler) or event (every handler gets a copy).
    #[arg(long, default_value = "command", value_parser = ["command", "event"])]
    pub kind: String,
    /// Header, repeatable: `--header key=value`.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Message id (makes the post idempotent); only with a single message.
    #[arg(long)]
    pub id: Option<String>,
    /// Deliver after this delay, e.g. `30s`, `5m`.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub delay: Option<Duration>,
    /// Deliver at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub at: Option<SystemTime>,
    /// Drop the message (job expired) if not started within this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
    /// Send the body bytes as they are, without checking that they are JSON.
    #[arg(long)]
    pub raw: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Milliseconds, saturating: a duration too long for i64 ms is "never".
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) async fn run(config: &Config, args: PostArgs) -> anyhow::Result<()> {
    crate::names::check_channel(&args.channel)?;
    let headers = super::send::parse_headers(&args.headers)?;
    // The caller's trace, if it gave one; else each message starts its own.
    let given_trace = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(telemetry::TRACEPARENT))
        .map(|(_, v)| telemetry::TraceParent::parse(v))
        .transpose()
        .context("--header traceparent")?;
    let kind = MessageKind::parse(&args.kind).unwrap_or_default();
    let now = now_ms();
    let visible_at = match (args.at, args.delay) {
        (Some(at), _) => at
            .duration_since(UNIX_EPOCH)
            .map(ms)
            .context("--at is before 1970")?,
        (None, Some(d)) => now.saturating_add(ms(d)),
        (None, None) => now,
    };
    let expires_at = args.expires_in.map(|d| now.saturating_add(ms(d)));
    let make = |line_no: Option<usize>, body: &str| -> anyhow::Result<NewMessage> {
        if !args.raw
            && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(body)
        {
            {
                match line_no {
                    Some(n) => bail!(
                        "stdin line {n} is not valid JSON ({e}); the lines before it were queued, nothing from it on (use --raw to send non-JSON bodies)"
                    ),
                    None => bail!("the body is not valid JSON ({e}); use --raw to send it anyway"),
                }
            }
        }
        let mut headers = headers.clone();
        telemetry::set(
            &mut headers,
            &given_trace.unwrap_or_else(telemetry::TraceParent::new_root),
        );
        Ok(NewMessage {
            message: Message {
                id: args.id.clone().unwrap_or_else(new_id),
                channel: args.channel.clone(),
                kind,
                headers,
                body: body.as_bytes().to_vec(),
            },
            visible_at,
            expires_at,
        })
    };
    let mut printer = Printer { json: args.json };
    match args.body.as_deref() {
        Some(body) if body != "-" => {
            // Validate before opening: a rejected post creates nothing.
            let message = make(None, body)?;
            let published = Sink::open(config).await?.publish(vec![message]).await?;
            printer.print(&published);
        }
        _ => {
            if args.id.is_some() {
                bail!("--id names one message; it cannot be used with stdin");
            }
            let store = Sink::open(config).await?;
            let stdin = std::io::stdin();
            let mut chunk = Vec::with_capacity(CHUNK);
            for (i, line) in stdin.lock().lines().enumerate() {
                let line = line.context("reading stdin")?;
                if line.trim().is_empty() {
                    continue;
                }
                match make(Some(i + 1), &line) {
                    Ok(m) => chunk.push(m),
                    Err(e) => {
                        // Queue what came before the bad line, then stop.
                        printer.print(&store.publish(std::mem::take(&mut chunk)).await?);
                        return Err(e);
                    }
                }
                if chunk.len() == CHUNK {
                    printer.print(&store.publish(std::mem::take(&mut chunk)).await?);
                }
            }
            if !chunk.is_empty() {
                printer.print(&store.publish(chunk).await?);
            }
        }
    }
    Ok(())
}

/// Where posts go: the embedded queue in the data dir's database, or
/// straight onto JetStream when `--nats` is given.
enum Sink {
    Store(crate::store::Store),
    JetStream(crate::transport::JetStream),
}

impl Sink {
    async fn open(config: &Config) -> anyhow::Result<Sink> {
        let store = super::open_store(config)?;
        Ok(match &config.nats {
            None => Sink::Store(store),
            Some(settings) => Sink::JetStream(
                crate::transport::JetStream::connect(
                    settings.clone(),
                    store,
                    std::sync::Arc::new(|_: &str| 1),
                )
                .await?,
            ),
        })
    }

    async fn publish(&self, messages: Vec<NewMessage>) -> anyhow::Result<Vec<Published>> {
        use crate::transport::Transport;
        Ok(match self {
            Sink::Store(store) => store.publish(messages).await?,
            Sink::JetStream(js) => js.publish(messages).await?,
        })
    }
}

struct Printer {
    json: bool,
}

impl Printer {
    fn print(&mut self, published: &[crate::store::Published]) {
        for p in published {
            if self.json {
                let v = serde_json::json!({
                    "message_id": p.message_id, "job_ids": p.job_ids, "duplicate": p.duplicate,
                });
                println!("{v}");
            } else if p.job_ids.is_empty() {
                // On JetStream jobs are created by the hosts that receive it.
                println!("{}", p.message_id);
            } else {
                for job in &p.job_ids {
                    println!("{job}");
                }
                if p.duplicate {
                    eprintln!(
                        "note: message {} was posted before; nothing new queued",
                        p.message_id
                    );
                }
            }
        }
    }
}
