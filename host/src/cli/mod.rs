//! The command line: clap definitions and dispatch. This is the edge, so it
//! uses `anyhow`; every error reaches the user as one line and a non-zero
//! exit (see `main.rs`).

mod control;
mod cron;
mod dev;
mod inspect;
mod new;
mod outbox;
mod plugins;
mod post;
mod send;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::store::Store;

/// Sluice: run WebAssembly message handlers with retries, dead letters and
/// exactly-once effects.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file (TOML). Flags override it.
    #[arg(long, global = true, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of plugin .wasm files [default: ./plugins]
    #[arg(long, global = true, env = "SLUICE_PLUGINS", value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Data directory (SQLite database) [default: ./sluice-data]
    #[arg(long, global = true, env = "SLUICE_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Run on NATS JetStream at this URL instead of the embedded queue.
    #[arg(long, global = true, env = "SLUICE_NATS", value_name = "URL")]
    pub nats: Option<String>,
    /// Serve the HTTP API on this address (`run`), or call the running
    /// daemon's API there (`pause`, `resume`).
    #[arg(long, global = true, env = "SLUICE_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Bearer token for the HTTP API (overrides `[http] token`).
    #[arg(
        long,
        global = true,
        env = "SLUICE_HTTP_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub http_token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: pull messages, run handlers, until SIGINT/SIGTERM.
    Run,
    /// Queue messages: one JSON argument, or one message per line on stdin.
    Post(post::PostArgs),
    /// Try a plugin by hand: run a channel's handler(s) once, in this
    /// process, without a daemon or the queue; print the outcome and the
    /// effects the call would commit (nothing is committed).
    Send(send::SendArgs),
    /// List jobs, newest first.
    Jobs(inspect::JobsArgs),
    /// Show one job.
    Job(inspect::JobArgs),
    /// Dead letters: list or replay.
    #[command(subcommand)]
    Dlq(inspect::DlqCommand),
    /// Load the plugins directory and show what each file provides.
    Plugins(plugins::PluginsArgs),
    /// Recurring messages (`[[cron]]` in the config file): next fire times
    /// and last ticks.
    #[command(subcommand)]
    Cron(cron::CronCommand),
    /// The outbox (JetStream): messages committed for publishing.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Stop a channel's pumps fetching (messages stay queued), through the
    /// running daemon's HTTP API.
    Pause(control::ChannelArgs),
    /// Let a paused channel's pumps fetch again, through the running
    /// daemon's HTTP API.
    Resume(control::ChannelArgs),
    /// The plugin author's loop: build the project in DIR, run it in a local
    /// daemon, rebuild and hot-swap it on every change, print each job.
    Dev(dev::DevArgs),
    /// Create a plugin project (Rust or Python, handler or mapper) that
    /// builds into a component with one command.
    New(new::NewArgs),
    /// Benchmark: drive messages through an in-process host on the embedded
    /// queue and JetStream, with baselines measured in the same run.
    Bench(crate::bench::BenchArgs),
}

impl Cli {
    /// The validated configuration for this invocation.
    pub fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&Overrides {
            config_file: self.config.clone(),
            plugins_dir: self.plugins.clone(),
            data_dir: self.data.clone(),
            nats_url: self.nats.clone(),
            http_addr: self.http.clone(),
            http_token: self.http_token.clone(),
        })?)
    }
}

/// Runs one command. `shutdown` / `hard_stop` are wired to signals by `main`.
pub async fn execute(
    cli: Cli,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) -> anyhow::Result<()> {
    // Creating a project needs no configuration (and must not fail on one).
    if let Command::New(args) = cli.command {
        return new::run(args);
    }
    let config = cli.config()?;
    let explicit_dirs = (cli.plugins.is_some(), cli.data.is_some());
    match cli.command {
        Command::Run => Ok(crate::daemon::run(config, shutdown, hard_stop).await?),
        Command::Post(args) => post::run(&config, args).await,
        Command::Send(args) => send::run(&config, args).await,
        Command::Jobs(args) => inspect::jobs(&open_existing(&config)?, args).await,
        Command::Job(args) => inspect::job(&open_existing(&config)?, &config, args).await,
        Command::Dlq(cmd) => {
            inspect::dlq(&open_existing(&config)?, config.nats.as_ref(), cmd).await
        }
        Command::Plugins(args) => plugins::list(&config, args).await,
        Command::Outbox(cmd) => outbox::run(&open_existing(&config)?, cmd).await,
        Command::Cron(cmd) => cron::run(&config, cmd).await,
        Command::Pause(args) => control::channel(&config, "pause", args).await,
        Command::Resume(args) => control::channel(&config, "resume", args).await,
        Command::New(args) => new::run(args),
        Command::Dev(args) => dev::run(config, explicit_dirs, args, shutdown, hard_stop).await,
        Command::Bench(args) => crate::bench::run(config, cli.data, args).await,
    }
}

/// Opens (creating if needed) the data directory's database.
pub(super) fn open_store(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::open(&config.database_path(), &config.store)?)
}

/// Opens the database for reading commands, which must not create one: a
/// typo in `--data` should say so, not show an empty queue.
fn open_existing(config: &Config) -> anyhow::Result<Store> {
    let path = config.database_path();
    if !path.exists() {
        anyhow::bail!(
            "no sluice database at {} (run `sluice run` or `sluice post` first, or pass --data)",
            path.display()
        );
    }
    open_store(config).with_context(|| format!("opening {}", path.display()))
}
