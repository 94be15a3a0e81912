//! `sluice post`: queue wire messages from the command line or stdin.
//!
//! From stdin the work is a pipeline: a thread reads and checks lines
//! (JSON parsing is most of the CPU a post costs) while the chunks read
//! before are being committed (embedded: several chunks share one group
//! commit, i.e. one fsync) or published (JetStream: acks pipelined, see
//! `transport::jetstream::publish`). Ids are printed in input order as
//! their chunk is answered. When something fails, the command says exactly
//! which lines were not queued; every other line read before was, and
//! nothing after the failure is read.

use std::io::BufRead;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;

use crate::config::Config;
use crate::message::{Message, MessageKind, new_id, now_ms, options};
use crate::store::{NewMessage, Published};
use crate::telemetry::{self, TraceParent};

/// How many stdin lines go into one store transaction (or one pipelined
/// publish).
const CHUNK: usize = 1000;

/// Chunks being committed or published at once (and as many read ahead).
const IN_FLIGHT: usize = 4;

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
    /// Priority within the channel, 0 (default) to 9: higher runs first
    /// (the `sluice-priority` header).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: Option<u8>,
    /// Uniqueness key: while a message with this key on the channel is
    /// waiting or running, this post is refused and answered with it (the
    /// `sluice-unique` header).
    #[arg(long, value_name = "KEY")]
    pub unique: Option<String>,
    /// How long the key is held at most, even if the job never ends
    /// (default 1h, 1s to 30d).
    #[arg(long, value_name = "DURATION", requires = "unique")]
    pub unique_for: Option<String>,
    /// What a post whose key is held does: reject (default) or replace
    /// (cancel the waiting holder, queue this one; a holder that has
    /// started keeps its key, and the post is refused).
    #[arg(long, value_parser = ["reject", "replace"], requires = "unique")]
    pub on_duplicate: Option<String>,
    /// Debounce key: of a burst of posts with this key on the channel only
    /// the last runs, once none came for `--debounce-for` (the
    /// `sluice-debounce` header).
    #[arg(long, value_name = "KEY")]
    pub debounce: Option<String>,
    /// The debounce window (default 5s, 1s to 1d).
    #[arg(long, value_name = "DURATION", requires = "debounce")]
    pub debounce_for: Option<String>,
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

/// Turns bodies into messages: what every message of one `sluice post`
/// shares.
struct Maker {
    channel: String,
    kind: MessageKind,
    headers: Vec<(String, String)>,
    /// The caller's trace, if it gave one; else each message starts its own.
    given_trace: Option<TraceParent>,
    id: Option<String>,
    visible_at: i64,
    expires_at: Option<i64>,
    raw: bool,
}

impl Maker {
    fn new(args: &PostArgs) -> anyhow::Result<Maker> {
        crate::names::check_channel(&args.channel)?;
        let mut headers = super::send::parse_headers(&args.headers)?;
        if let Some(p) = args.priority {
            options::set(&mut headers, options::PRIORITY_HEADER, p.to_string());
        }
        for (flag, name, value) in [
            ("--unique", options::UNIQUE_HEADER, &args.unique),
            ("--unique-for", options::UNIQUE_FOR_HEADER, &args.unique_for),
            (
                "--on-duplicate",
                options::ON_DUPLICATE_HEADER,
                &args.on_duplicate,
            ),
            ("--debounce", options::DEBOUNCE_HEADER, &args.debounce),
            (
                "--debounce-for",
                options::DEBOUNCE_FOR_HEADER,
                &args.debounce_for,
            ),
        ] {
            if let Some(v) = value {
                if let Some(Err(rule)) = options::check(name, v) {
                    bail!("{flag}: {rule}");
                }
                options::set(&mut headers, name, v.clone());
            }
        }
        let given_trace = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(telemetry::TRACEPARENT))
            .map(|(_, v)| TraceParent::parse(v))
            .transpose()
            .context("--header traceparent")?;
        let now = now_ms();
        let visible_at = match (args.at, args.delay) {
            (Some(at), _) => at
                .duration_since(UNIX_EPOCH)
                .map(ms)
                .context("--at is before 1970")?,
            (None, Some(d)) => now.saturating_add(ms(d)),
            (None, None) => now,
        };
        Ok(Maker {
            channel: args.channel.clone(),
            kind: MessageKind::parse(&args.kind).unwrap_or_default(),
            headers,
            given_trace,
            id: args.id.clone(),
            visible_at,
            expires_at: args.expires_in.map(|d| now.saturating_add(ms(d))),
            raw: args.raw,
        })
    }

    /// The message for `body` (stdin line `line_no`, if from stdin).
    fn make(&self, line_no: Option<usize>, body: &str) -> anyhow::Result<NewMessage> {
        if !self.raw
            && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(body)
        {
            match line_no {
                Some(n) => bail!(
                    "stdin line {n} is not valid JSON ({e}) (use --raw to send non-JSON bodies)"
                ),
                None => bail!("the body is not valid JSON ({e}); use --raw to send it anyway"),
            }
        }
        let mut headers = self.headers.clone();
        telemetry::set(
            &mut headers,
            &self.given_trace.unwrap_or_else(TraceParent::new_root),
        );
        Ok(NewMessage {
            message: Message {
                id: self.id.clone().unwrap_or_else(new_id),
                channel: self.channel.clone(),
                kind: self.kind,
                headers,
                body: body.as_bytes().to_vec(),
            },
            visible_at: self.visible_at,
            expires_at: self.expires_at,
        })
    }
}

pub(super) async fn run(config: &Config, args: PostArgs) -> anyhow::Result<()> {
    let maker = Maker::new(&args)?;
    let mut printer = Printer::new(args.json);
    match args.body.as_deref() {
        Some(body) if body != "-" => {
            // Validate before opening: a rejected post creates nothing.
            let message = maker.make(None, body)?;
            let sink = Sink::open(config).await?;
            for answer in sink.publish_each(vec![message]).await {
                printer.print(None, &answer.map_err(|e| anyhow::anyhow!(e))?);
            }
            Ok(())
        }
        _ => {
            if args.id.is_some() {
                bail!("--id names one message; it cannot be used with stdin");
            }
            let sink = Sink::open(config).await?;
            post_stdin(&sink, maker, &mut printer).await
        }
    }
}

/// What the reading thread hands over.
enum Read {
    /// Checked lines: (line number, message).
    Chunk(Vec<(usize, NewMessage)>),
    /// Reading stopped at a line that cannot be posted (or stdin failed).
    Stop(anyhow::Error),
}

/// Posts stdin, one message per non-blank line, in pipelined chunks.
async fn post_stdin(sink: &Sink, maker: Maker, printer: &mut Printer) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Read>(IN_FLIGHT);
    // A plain thread: stdin reads block. It stops when the receiver goes.
    std::thread::Builder::new()
        .name("sluice-post-read".into())
        .spawn(move || read_stdin(&maker, &tx))
        .context("starting the stdin reader")?;
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    let mut stopped: Option<anyhow::Error> = None;
    // Lines read but not queued, with the first reason.
    let mut not_queued: Vec<usize> = Vec::new();
    let mut reason: Option<String> = None;
    let mut last_read = 0;
    loop {
        tokio::select! {
            read = rx.recv(), if reading && in_flight.len() < IN_FLIGHT => match read {
                Some(Read::Chunk(chunk)) => {
                    last_read = chunk.last().map_or(last_read, |(n, _)| *n);
                    let (lines, messages): (Vec<usize>, Vec<NewMessage>) =
                        chunk.into_iter().unzip();
                    in_flight.push_back(async move { (lines, sink.publish_each(messages).await) });
                }
                Some(Read::Stop(e)) => {
                    reading = false;
                    stopped = Some(e);
                }
                None => reading = false,
            },
            Some((lines, answers)) = in_flight.next() => {
                for (line, answer) in lines.into_iter().zip(answers) {
                    match answer {
                        Ok(p) => printer.print(Some(line), &p),
                        Err(e) => {
                            not_queued.push(line);
                            reason.get_or_insert(e);
                        }
                    }
                }
                if reason.is_some() && reading {
                    // Stop reading; what was read ahead is not queued.
                    reading = false;
                    rx.close();
                    while let Ok(read) = rx.try_recv() {
                        if let Read::Chunk(chunk) = read {
                            last_read = chunk.last().map_or(last_read, |(n, _)| *n);
                            not_queued.extend(chunk.into_iter().map(|(n, _)| n));
                        }
                    }
                }
            },
            else => break,
        }
    }
    match (reason, stopped) {
        (None, None) => Ok(()),
        (None, Some(e)) => Err(e.context("the lines before it were queued, nothing from it on")),
        (Some(reason), stopped) => {
            not_queued.sort_unstable();
            let after = match stopped {
                Some(e) => format!("; then reading stopped: {e:#}"),
                None => format!("; reading stopped after line {last_read}"),
            };
            bail!(
                "stdin {} not queued: {reason}; every other line up to line {last_read} was queued (their ids are printed){after}",
                line_ranges(&not_queued)
            )
        }
    }
}

/// Reads stdin into checked chunks until it ends, a line cannot be posted,
/// or nobody listens any more.
fn read_stdin(maker: &Maker, tx: &tokio::sync::mpsc::Sender<Read>) {
    let stdin = std::io::stdin();
    let mut chunk = Vec::with_capacity(CHUNK);
    for (i, line) in stdin.lock().lines().enumerate() {
        let stop = match line.context("reading stdin") {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => match maker.make(Some(i + 1), &line) {
                Ok(m) => {
                    chunk.push((i + 1, m));
                    None
                }
                Err(e) => Some(e),
            },
            Err(e) => Some(e),
        };
        if let Some(e) = stop {
            if !chunk.is_empty() && tx.blocking_send(Read::Chunk(chunk)).is_err() {
                return;
            }
            let _ = tx.blocking_send(Read::Stop(e));
            return;
        }
        if chunk.len() == CHUNK
            && tx
                .blocking_send(Read::Chunk(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK),
                )))
                .is_err()
        {
            return;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Read::Chunk(chunk));
    }
}

/// `line 7`, `lines 3-5, 9`.
fn line_ranges(lines: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end = lines[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    let noun = if lines.len() == 1 { "line" } else { "lines" };
    format!("{noun} {}", parts.join(", "))
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
                crate::transport::JetStream::connect(settings.clone(), store).await?,
            ),
        })
    }

    /// Posts `messages` and answers for each, in order. The embedded queue
    /// commits them in one transaction (all or none); JetStream answers per
    /// message.
    async fn publish_each(&self, messages: Vec<NewMessage>) -> Vec<Result<Published, String>> {
        match self {
            Sink::Store(store) => {
                let n = messages.len();
                match store.publish(messages).await {
                    Ok(published) => published.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e.to_string()); n],
                }
            }
            Sink::JetStream(js) => js
                .publish_each(messages)
                .await
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect(),
        }
    }
}

/// Prints what was queued to stdout, buffered (a post of a million lines
/// prints a million ids).
struct Printer {
    json: bool,
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Printer {
    fn new(json: bool) -> Printer {
        Printer {
            json,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    /// One posted message (stdin line `line`, if from stdin).
    fn print(&mut self, line: Option<usize>, p: &Published) {
        use std::io::Write as _;
        // A closed stdout (`| head`) must not stop the post: keep queueing.
        if self.json {
            let mut v = serde_json::json!({
                "message_id": p.message_id, "job_ids": p.job_ids, "duplicate": p.duplicate,
            });
            if let Some(holder) = &p.duplicate_of {
                v["duplicate_of"] = holder.as_str().into();
            }
            if !p.replaced.is_empty() {
                v["replaced"] = p.replaced.clone().into();
            }
            if let Some(holder) = &p.replaced_message {
                v["replaced_message"] = holder.as_str().into();
            }
            if let Some(line) = line {
                v["line"] = line.into();
            }
            let _ = writeln!(self.out, "{v}");
        } else if p.job_ids.is_empty() {
            // On JetStream jobs are created by the hosts that receive it.
            let _ = writeln!(self.out, "{}", p.message_id);
            if p.duplicate_of.is_some() {
                let _ = self.out.flush();
                eprintln!(
                    "note: message {} holds this post's unique key; nothing new queued",
                    p.message_id
                );
            }
            if let Some(holder) = &p.replaced_message {
                let _ = self.out.flush();
                eprintln!(
                    "note: replaced the key's previous holder: message {holder} (its jobs will not run)"
                );
            }
        } else {
            for job in &p.job_ids {
                let _ = writeln!(self.out, "{job}");
            }
            if let Some(holder) = &p.duplicate_of {
                let _ = self.out.flush();
                eprintln!(
                    "note: message {holder} holds this post's unique key; nothing new queued (its job ids above)"
                );
            } else if p.duplicate {
                let _ = self.out.flush();
                eprintln!(
                    "note: message {} was posted before; nothing new queued",
                    p.message_id
                );
            }
            if !p.replaced.is_empty() {
                let _ = self.out.flush();
                eprintln!(
                    "note: replaced (cancelled) the key's previous holder: job {}",
                    p.replaced.join(", ")
                );
            }
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        use std::io::Write as _;
        let _ = self.out.flush();
    }
}
