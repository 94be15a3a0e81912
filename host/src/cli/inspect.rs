//! `sluice jobs`, `sluice job`, `sluice dlq`: read and replay job records.

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::store::{JobFilter, JobRecord, JobState, Store};

/// `sluice jobs` arguments.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, scheduled, running, succeeded,
    /// retrying, dead, cancelled, expired).
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs on this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `sluice job` arguments.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job id.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue with fresh attempts.
    Replay {
        /// The dead letter's job id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state {s:?}; one of: {}", all.join(", "))
    })
}

pub(super) async fn jobs(store: &Store, args: JobsArgs) -> anyhow::Result<()> {
    let jobs = store
        .jobs(JobFilter {
            state: args.state,
            channel: args.channel,
            limit: args.limit,
        })
        .await?;
    print_jobs(&jobs, args.json)
}

/// Why a queued job waits under its handler's flow rules, as far as this
/// process can tell from the store: the reason its record carries (a job
/// a JetStream host turned back), or (embedded) its key's running jobs at
/// the limit. A rate limit's bucket lives in the daemon: the API says it.
async fn waiting(
    store: &Store,
    config: &crate::config::Config,
    job: &JobRecord,
) -> anyhow::Result<Option<String>> {
    if !matches!(
        job.state,
        JobState::Queued | JobState::Scheduled | JobState::Retrying
    ) {
        return Ok(None);
    }
    if job.state == JobState::Queued
        && let Some(e) = job
            .last_error
            .as_deref()
            .filter(|e| e.starts_with(crate::flow::WAITING_PREFIX))
    {
        return Ok(Some(e.to_owned()));
    }
    let Some(c) = config
        .flow_for(&job.consumer)
        .and_then(|s| s.concurrency.as_ref())
    else {
        return Ok(None);
    };
    if job.visible_at > crate::message::now_ms() {
        return Ok(None);
    }
    let key = c.key.key_of(&job.headers, job.body.as_bytes());
    let running = store
        .jobs(JobFilter {
            state: Some(JobState::Running),
            channel: None,
            limit: 10_000,
        })
        .await?;
    let n = running
        .iter()
        .filter(|r| {
            r.consumer == job.consumer && c.key.key_of(&r.headers, r.body.as_bytes()) == key
        })
        .count();
    Ok((n >= usize::try_from(c.limit).unwrap_or(usize::MAX))
        .then(|| crate::flow::Waiting::Concurrency(key).to_string()))
}

pub(super) async fn job(
    store: &Store,
    config: &crate::config::Config,
    args: JobArgs,
) -> anyhow::Result<()> {
    let Some(job) = store.job(&args.id).await? else {
        bail!("no job with id {}", args.id);
    };
    let waiting = waiting(store, config, &job).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(());
    }
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let time = |t: Option<i64>| t.map_or_else(|| "-".into(), format_time);
    println!("job        {}", job.id);
    match &waiting {
        Some(w) => println!("state      {} ({w})", job.state),
        None => println!("state      {}", job.state),
    }
    println!("channel    {} ({})", job.channel, job.kind);
    println!("handler    {}", handler(&job));
    println!("message    {}", job.message_id);
    if let Some(tick) = crate::cron::tick_of(&job.headers) {
        println!("cron tick  {tick}");
    }
    if let Some(u) = crate::message::options::unique(&job.headers) {
        println!(
            "unique     {} (held at most {})",
            u.key,
            humantime::format_duration(u.ttl)
        );
    }
    if let Some((key, window)) = crate::message::options::debounce(&job.headers) {
        println!(
            "debounce   {key} (window {})",
            humantime::format_duration(window)
        );
    }
    println!(
        "attempts   {} (slices {}, replays {}, state conflicts {})",
        job.attempts, job.slices, job.replays, job.conflicts
    );
    println!("plugin     {}", opt(&job.plugin_version));
    println!("fuel       {}", job.fuel_used);
    println!(
        "progress   {}{}",
        job.progress.map_or_else(|| "-".into(), |p| format!("{p}%")),
        job.progress_note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    println!("cursor     {}", opt(&job.cursor));
    println!("result     {}", opt(&job.result));
    println!("error      {}", opt(&job.last_error));
    println!("created    {}", format_time(job.created_at));
    println!("runs at    {}", format_time(job.visible_at));
    println!("started    {}", time(job.started_at));
    println!("finished   {}", time(job.finished_at));
    println!("expires    {}", time(job.expires_at));
    println!("body       {}", job.body);
    Ok(())
}

pub(super) async fn dlq(
    store: &Store,
    nats: Option<&crate::transport::JetStreamSettings>,
    cmd: DlqCommand,
) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List {
            channel,
            limit,
            json,
        } => {
            let jobs = store
                .jobs(JobFilter {
                    state: Some(JobState::Dead),
                    channel,
                    limit,
                })
                .await?;
            print_jobs(&jobs, json)
        }
        DlqCommand::Replay { id, all } => {
            // On JetStream the queue is the stream: replaying re-publishes
            // each job to its handler, resuming from its cursor.
            let js = match nats {
                None => None,
                Some(s) => {
                    Some(crate::transport::JetStream::connect(s.clone(), store.clone()).await?)
                }
            };
            let ids = match id {
                Some(id) => vec![id],
                None => store
                    .jobs(JobFilter {
                        state: Some(JobState::Dead),
                        channel: None,
                        limit: usize::MAX >> 1,
                    })
                    .await?
                    .into_iter()
                    .map(|j| j.id)
                    .collect(),
            };
            let mut n = 0;
            for id in &ids {
                let replayed = match &js {
                    Some(js) => js.replay(id).await?,
                    None => store.replay(id).await?,
                };
                if !replayed {
                    if !all {
                        bail!("no dead letter with id {id}");
                    }
                    continue;
                }
                n += 1;
            }
            // The replays are in the outbox, committed; send them now. If
            // the server refuses for the moment, the daemon's relay sends
            // them later: nothing is lost either way.
            if let Some(js) = &js
                && let Err(e) = js.flush_outbox().await
            {
                eprintln!(
                    "replayed, but not yet re-published ({e}); the daemon's outbox relay will send it"
                );
            }
            if !all {
                println!("replayed {}", ids.join(" "));
            } else {
                println!("replayed {n} dead letter{}", if n == 1 { "" } else { "s" });
            }
            Ok(())
        }
    }
}

fn handler(job: &JobRecord) -> &str {
    if job.consumer.is_empty() {
        "(none yet: no handler has registered for this channel)"
    } else {
        &job.consumer
    }
}

fn print_jobs(jobs: &[JobRecord], json: bool) -> anyhow::Result<()> {
    if json {
        for job in jobs {
            println!("{}", serde_json::to_string(job)?);
        }
        return Ok(());
    }
    println!(
        "{:<36}  {:<9}  {:<20}  {:<20}  {:>3}  {:<19}  ERROR",
        "JOB", "STATE", "CHANNEL", "HANDLER", "ATT", "UPDATED"
    );
    for job in jobs {
        let consumer = if job.consumer.is_empty() {
            "-"
        } else {
            &job.consumer
        };
        let error = job.last_error.as_deref().unwrap_or("");
        println!(
            "{:<36}  {:<9}  {:<20}  {:<20}  {:>3}  {:<19}  {}",
            job.id,
            job.state.as_str(),
            job.channel,
            consumer,
            job.attempts,
            format_time(job.updated_at),
            first_line(error, 100)
        );
    }
    Ok(())
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn format_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
