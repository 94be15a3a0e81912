//! `sluice outbox list | repost ID`: Brighter's message store and Repost.
//! On JetStream, a committed job's posts wait here until the relay has
//! published them; sent rows are kept (for repost) until retention prunes
//! them.

use anyhow::bail;
use clap::Subcommand;

use crate::store::Store;

/// `sluice outbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List outbox rows, newest first.
    List {
        /// Only rows not yet published.
        #[arg(long)]
        pending: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Publish a row again (by its id or seq). The stream drops it if the
    /// first send is still inside its duplicate window.
    Repost {
        /// The row's id (its Nats-Msg-Id) or seq.
        id: String,
    },
}

pub(super) async fn run(store: &Store, cmd: OutboxCommand) -> anyhow::Result<()> {
    match cmd {
        OutboxCommand::List {
            pending,
            limit,
            json,
        } => {
            let rows = store.outbox_list(pending, limit).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
                return Ok(());
            }
            println!(
                "{:>6}  {:<40}  {:<24}  {:<8}  {:<20}  SENT",
                "SEQ", "ID", "CHANNEL", "KIND", "HANDLER"
            );
            for r in rows {
                let sent = r
                    .sent_at
                    .map_or_else(|| "pending".into(), |t| t.to_string());
                println!(
                    "{:>6}  {:<40}  {:<24}  {:<8}  {:<20}  {sent}",
                    r.seq,
                    r.id,
                    r.channel,
                    r.message.kind.as_str(),
                    r.consumer.as_deref().unwrap_or("(all)"),
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
