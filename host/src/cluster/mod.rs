//! What the hosts of one JetStream share about jobs, beyond the stream.
//!
//! Each host records jobs in its own SQLite, and a job moves between hosts
//! (a retry, a next slice or a hand-back is a message any host may take).
//! So that every host can answer for every job:
//! - `board`: each host writes the status of every job it changed to the
//!   KV bucket `SLUICE_JOBS`; `GET /v1/jobs/{id}` on any host reads it when
//!   its own record is missing or behind.
//! - `reconcile`: a host's record of a job another host carried on (left
//!   `retrying`, `queued` or `scheduled` here) takes the final status the
//!   other host shared, so no record stays non-final for ever.
//! - `cancel`: an operator's cancel is written to the KV bucket
//!   `SLUICE_CANCELS`; every host watches it, interrupts the job if it runs
//!   it, and records it cancelled (also when it has never seen the job),
//!   so a later delivery anywhere is acked without running.
//!
//! - `hosts`: every host writes a key of its own to `SLUICE_HOSTS` and
//!   reads the others', so a host whose plugins' state is split from
//!   another host's (`[nats] shared_state` off) says so, loudly.
//!
//! Each is a task of its own, supervised by the daemon; all of it runs on
//! every JetStream host, with or without the HTTP API.

mod board;
mod cancel;
mod hosts;
mod reconcile;

use std::time::Duration;

pub use board::{BUCKET, Refused, Seen, StatusBoard};
pub use cancel::{CANCELS, CancelNote, Cancels};
pub use hosts::{BEAT, HOSTS, Hosts, StateSplit};
pub use reconcile::reconcile;

use crate::transport::JetStream;

/// The shared buckets of one JetStream.
#[derive(Clone)]
pub struct Cluster {
    /// Job statuses.
    pub board: StatusBoard,
    /// Operators' cancels.
    pub cancels: Cancels,
    /// This host's presence, and what it sees of the others.
    pub hosts: Hosts,
}

impl Cluster {
    /// Opens (or creates) the buckets; job entries expire after `max_age`
    /// (the stream's: no delivery outlives it), host entries after three
    /// beats. `shared_state`: this host's `[nats] shared_state`.
    pub async fn open(
        js: &JetStream,
        replicas: usize,
        max_age: Duration,
        shared_state: bool,
    ) -> Result<Cluster, String> {
        Ok(Cluster {
            board: StatusBoard::open(js, replicas, max_age).await?,
            cancels: Cancels::open(js, replicas, max_age).await?,
            hosts: Hosts::open(js, replicas, shared_state).await?,
        })
    }
}

/// Opens bucket `name`, creating it if needed (one revision per key).
async fn bucket(
    js: &JetStream,
    name: &str,
    description: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<async_nats::jetstream::kv::Store, String> {
    let context = async_nats::jetstream::new(js.client().clone());
    match context.get_key_value(name).await {
        Ok(kv) => Ok(kv),
        Err(_) => context
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: name.to_owned(),
                description: description.to_owned(),
                history: 1,
                max_age,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create key-value bucket {name}: {e}")),
    }
}
