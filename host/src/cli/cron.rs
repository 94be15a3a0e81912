//! `sluice cron list`: the `[[cron]]` entries of the config file, each
//! with its next fire times and the last tick fired (read from the data
//! directory's database, or on JetStream from the `SLUICE_CRON` bucket
//! every host shares).

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::cron::{self, Ledger as _};
use crate::message::now_ms;

/// `sluice cron` subcommands.
#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Each cron's schedule, next fire times and last tick.
    List(ListArgs),
}

/// `sluice cron list` arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON object per cron.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(config: &Config, cmd: CronCommand) -> anyhow::Result<()> {
    let CronCommand::List(args) = cmd;
    let records = match &config.nats {
        Some(nats) => {
            let client = async_nats::connect(nats.url.as_str())
                .await
                .with_context(|| format!("connecting to NATS at {}", nats.url))?;
            cron::records_via(&client, &config.cron).await?
        }
        None if config.database_path().exists() => {
            cron::StoreLedger::new(super::open_store(config)?, None)
                .records(&config.cron)
                .await?
        }
        None => Vec::new(),
    };
    let views = cron::views(&config.cron, &records, now_ms());
    if args.json {
        for v in &views {
            println!("{}", serde_json::to_string(v)?);
        }
        return Ok(());
    }
    if views.is_empty() {
        println!("no [[cron]] entries in the config file");
        return Ok(());
    }
    println!(
        "{:<24} {:<18} {:<16} {:<20} {:<5} {:<21} {:<21} {:>6} {:>6}",
        "NAME", "SCHEDULE", "ZONE", "CHANNEL", "MISS", "NEXT", "LAST TICK", "FIRED", "SKIP"
    );
    for v in &views {
        println!(
            "{:<24} {:<18} {:<16} {:<20} {:<5} {:<21} {:<21} {:>6} {:>6}",
            v.name,
            v.schedule,
            v.time_zone,
            v.channel,
            v.missed.as_str(),
            v.next.first().map_or("never", String::as_str),
            v.last_tick.as_deref().unwrap_or("-"),
            v.fired,
            v.skipped
        );
    }
    Ok(())
}
