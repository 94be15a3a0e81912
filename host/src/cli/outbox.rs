//! `sluice outbox list | repost ID`: Brighter's message store and Repost.
//! On JetStream, a committed job's posts wait here until the relay has
//! published them; sent rows are kept (for repost) until retention prunes
//! them. Poison rows (ones the broker can never take as they are) are kept
//! with the reason until reposted.

use anyhow::bail;
use clap::Subcommand;

use crate::store::{OutboxFilter, Store};

/// `sluice outbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List outbox rows, newest first.
    List {
        /// Only rows not yet published.
        #[arg(long, conflicts_with = "poisoned")]
        pending: bool,
        /// Only poison rows: set aside because the broker refused them
        /// (too large, a header or subject it cannot carry).
        #[arg(long)]
        poisoned: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Publish a row again (by its id or seq), a poison row included. The
    /// stream drops it if the first send is still inside its duplicate
    /// window.
    Repost {
        /// The row's id (its Nats-Msg-Id) or seq.
        id: String,
    },
}

pub(super) async fn run(store: &Store, cmd: OutboxCommand) -> anyhow::Result<()> {
    match cmd {
        OutboxCommand::List {
            pending,
            poisoned,
            limit,
            json,
        } => {
            let filter = match (pending, poisoned) {
                (true, _) => OutboxFilter::Pending,
                (_, true) => OutboxFilter::Poisoned,
                _ => OutboxFilter::All,
            };
            let rows = store.outbox_list(filter, limit).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
                return Ok(());
            }
            println!(
                "{:>6}  {:<40}  {:<24}  {:<8}  {:<20}  {:<8}  ERROR",
                "SEQ", "ID", "CHANNEL", "KIND", "HANDLER", "STATUS"
            );
            for r in rows {
                let error = r.error.as_deref().unwrap_or("");
                let error: String = error.chars().take(120).collect();
                println!(
                    "{:>6}  {:<40}  {:<24}  {:<8}  {:<20}  {:<8}  {}",
                    r.seq,
                    r.id,
                    r.channel,
                    r.message.kind.as_str(),
                    r.consumer.as_deref().unwrap_or("(all)"),
                    r.status(),
                    error.replace(['\n', '\r'], " "),
                );
            }
            Ok(())
        }
        OutboxCommand::Repost { id } => {
            if !store.outbox_repost(&id).await? {
                bail!("no outbox row with id or seq {id}");
            }
            println!("queued {id} for publishing again (the running daemon's relay sends it)");
            Ok(())
        }
    }
}
