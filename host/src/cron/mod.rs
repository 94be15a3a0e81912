//! Recurring messages: `[[cron]]` entries of the config file, each a
//! schedule in a time zone and a message (channel, body, headers) posted
//! at every tick.
//!
//! Why the host fires ticks itself on both backends (not nats-server's
//! cron schedules, ADR-51): the server's schedules speak their own cron
//! dialect (six fields, Go's parser), so the instants `sluice cron list`
//! shows and the ones the server fires could disagree; a fired copy
//! carries the schedule's headers verbatim, so it names no tick (Sluice's
//! job ids come from message ids, and every tick must be its own job);
//! the server's catch-up after downtime is its own, not the documented
//! `missed` policy; and the embedded queue needs the host's ticker anyway.
//! So one ticker (`ticker`) decides every tick, on every host, and a
//! [`Ledger`] makes firing it idempotent:
//!
//! - a tick is named by (cron name, scheduled instant): its message id is
//!   [`tick_id`], so a tick posted twice is one message;
//! - each cron has a [`Record`] (last tick handled, last tick fired) that
//!   only moves forward by compare-and-set on its revision; a tick is
//!   fired only by the host whose write of it wins. Embedded
//!   (`store/cron.rs`): the record and the tick's jobs commit in one SQLite
//!   transaction. JetStream (`jetstream.rs`): the tick is published with
//!   `Nats-Msg-Id` = its id (the stream's duplicate window drops a second
//!   copy from another host), then the record in the `SLUICE_CRON` bucket
//!   is moved past it (revision CAS), so a host that starts after the
//!   window still sees the tick done. ARCHITECTURE.md says why that holds
//!   under kill -9 at every step.

mod jetstream;
mod schedule;
mod ticker;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use jetstream::{BUCKET, JetStreamLedger, records_via};
pub use schedule::{Schedule, utc};
pub use ticker::{Counters, run};

use crate::message::{Headers, Message, MessageKind};
use crate::store::{NewMessage, Store, StoreError};

/// Header on every tick's message: `NAME@INSTANT` (the instant in UTC,
/// RFC 3339), so a job says which cron and which tick it came from. The
/// host sets it; producers may not.
pub const CRON_HEADER: &str = "sluice-cron";

/// Default `deadline`: a tick fired later than this after its instant
/// counts as missed.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// What to do about ticks whose time passed while no host could fire them
/// (every host down, the store or NATS unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Fire the latest missed tick once, late (the default: a nightly
    /// report still runs after a night of downtime, once, not once per
    /// missed night).
    #[default]
    Once,
    /// Fire nothing late: a tick not fired within `deadline` of its
    /// instant is recorded as skipped.
    Skip,
}

impl Missed {
    /// The config file's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Once => "once",
            Missed::Skip => "skip",
        }
    }
}

/// One validated `[[cron]]` entry.
#[derive(Debug, Clone)]
pub struct CronEntry {
    /// Its name (the plugin-name rule: one token), unique in the file.
    pub name: String,
    /// When it fires.
    pub schedule: Schedule,
    /// Where each tick's message goes.
    pub channel: String,
    /// Command (default: one handler) or event (every handler).
    pub kind: MessageKind,
    /// The message body.
    pub body: Vec<u8>,
    /// Its headers (checked as a producer's).
    pub headers: Headers,
    /// The policy for missed ticks.
    pub missed: Missed,
    /// A tick fired later than this after its instant counts as missed.
    pub deadline: Duration,
}

impl CronEntry {
    /// The message of the tick at `instant` (ms).
    pub fn message(&self, instant: i64) -> NewMessage {
        let mut headers = self.headers.clone();
        headers.push((
            CRON_HEADER.to_owned(),
            format!("{}@{}", self.name, utc(instant)),
        ));
        NewMessage {
            message: Message {
                id: tick_id(&self.name, instant),
                channel: self.channel.clone(),
                kind: self.kind,
                headers,
                body: self.body.clone(),
            },
            visible_at: instant,
            expires_at: None,
        }
    }
}

/// The tick (`NAME@INSTANT`) a message's headers say it came from.
pub fn tick_of(headers: &Headers) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(CRON_HEADER))
        .map(|(_, v)| v.as_str())
}

impl CronEntry {
    /// The key of its record: the name and a digest of the schedule's
    /// fingerprint, so hosts that run different schedules under one name
    /// (a rolling deploy, a stale config) each keep their own record
    /// instead of resetting one another's for ever; a tick both name (same
    /// instant) is still one message (same id).
    pub fn record_key(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let digest = Sha256::digest(self.schedule.fingerprint().as_bytes());
        let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}.{tag}", self.name)
    }
}

/// The message id of cron `name`'s tick at `instant`: the same on every
/// host, so a tick posted twice is one message.
pub fn tick_id(name: &str, instant: i64) -> String {
    format!("cron:{name}@{}", utc(instant))
}

/// Where a cron stands, as every host shares it. Moves only forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The schedule's fingerprint the instants were computed for.
    pub spec: String,
    /// Every tick at or before this instant (ms) is done: fired, skipped,
    /// or before the cron was first seen with this schedule.
    pub handled: i64,
    /// The last tick fired (its instant, ms).
    pub fired: Option<i64>,
    /// When it was fired (ms).
    pub fired_at: Option<i64>,
    /// Ticks fired so far.
    #[serde(default)]
    pub fired_count: u64,
    /// Ticks skipped so far (missed with `missed = "skip"`, or earlier
    /// missed ticks of a run of them).
    #[serde(default)]
    pub skipped_count: u64,
    /// JetStream: the tick this record was moved to before its message was
    /// known to be stored (see `jetstream.rs`); cleared once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// A tick whose record moved before its message was known to be stored
/// (JetStream's order: record first, then the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The tick's instant (ms).
    pub tick: i64,
    /// The work stream's last sequence before the tick was published: its
    /// message, if stored, is after it.
    pub after_seq: u64,
    /// When the tick was first marked pending (ms; hosts taking it on keep
    /// it): no copy was stored before, so within the stream's duplicate
    /// window of this, a publish of the tick's id stores nothing twice.
    pub since: i64,
}

/// A record and the revision it was read at (the compare-and-set token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The record.
    pub record: Record,
    /// Its revision (embedded: a counter; JetStream: the KV revision).
    pub revision: u64,
}

/// What a write of a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// This host's write of the record won (false: the record had moved,
    /// another host got there first).
    pub won: bool,
    /// What became of the tick's message, if the write carried one.
    pub posted: Posted,
}

/// What posting a tick's message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// No message was posted (no tick, or the write lost on the embedded
    /// queue, where the post is part of it).
    Nothing,
    /// The message is new: this host fired the tick.
    New,
    /// The message existed already: another host had fired the tick.
    Duplicate,
}

impl Posted {
    /// `New` or `Duplicate` from a publish's duplicate flag.
    pub fn from_duplicate(duplicate: bool) -> Posted {
        if duplicate {
            Posted::Duplicate
        } else {
            Posted::New
        }
    }
}

/// Why a cron step failed (it is tried again on the next step).
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS failed.
    #[error("{0}")]
    Nats(String),
    /// A record could not be read.
    #[error("cron {name}: unreadable record: {reason}")]
    Corrupt {
        /// The cron.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Where the records live and how a tick is posted with its record.
pub trait Ledger: Send + Sync + 'static {
    /// Cron `name`'s record, if any.
    fn read(&self, name: &str)
    -> impl Future<Output = Result<Option<Versioned>, CronError>> + Send;

    /// Writes `record` if the stored one is still at `expected` (None: no
    /// record yet); with `tick`, posts the tick's message as part of the
    /// same step (see the module docs for how each backend ties them).
    fn write(
        &self,
        name: &str,
        record: Record,
        expected: Option<u64>,
        tick: Option<NewMessage>,
    ) -> impl Future<Output = Result<Written, CronError>> + Send;

    /// Makes sure the tick a record says is pending (`Record::pending`,
    /// read at `current`) is stored exactly once, and clears it; what the
    /// post did. Only JetStream's records are ever pending.
    fn settle_pending(
        &self,
        name: &str,
        current: Versioned,
        tick: NewMessage,
    ) -> impl Future<Output = Result<Written, CronError>> + Send {
        let _ = (name, current, tick);
        async {
            Ok(Written {
                won: false,
                posted: Posted::Nothing,
            })
        }
    }

    /// The records of `entries` (`sluice cron list`, the API); a cron
    /// with no record yet is left out.
    fn records(
        &self,
        entries: &[CronEntry],
    ) -> impl Future<Output = Result<Vec<(String, Record)>, CronError>> + Send {
        let names: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.name.clone(), e.record_key()))
            .collect();
        async move {
            let mut out = Vec::with_capacity(names.len());
            for (name, key) in names {
                if let Some(v) = self.read(&key).await? {
                    out.push((name, v.record));
                }
            }
            Ok(out)
        }
    }
}

/// The embedded queue's ledger: records in SQLite, a tick's jobs inserted
/// in the transaction that moves the record (`store/cron.rs`).
#[derive(Clone)]
pub struct StoreLedger {
    store: Store,
    wake: Option<crate::transport::Embedded>,
}

impl StoreLedger {
    /// Records in `store`; a fired tick wakes `queue`'s idle pumps.
    pub fn new(store: Store, queue: Option<crate::transport::Embedded>) -> StoreLedger {
        StoreLedger { store, wake: queue }
    }
}

impl Ledger for StoreLedger {
    async fn read(&self, name: &str) -> Result<Option<Versioned>, CronError> {
        let row = self.store.cron_record(name.to_owned()).await?;
        row.map(|(json, revision)| decode(name, &json).map(|record| Versioned { record, revision }))
            .transpose()
    }

    async fn write(
        &self,
        name: &str,
        record: Record,
        expected: Option<u64>,
        tick: Option<NewMessage>,
    ) -> Result<Written, CronError> {
        let json = encode(&record);
        let fired = tick.is_some();
        let written = self
            .store
            .cron_write(name.to_owned(), json, expected, tick)
            .await?;
        if fired
            && written.posted == Posted::New
            && let Some(queue) = &self.wake
        {
            queue.wake();
        }
        Ok(written)
    }
}

fn encode(record: &Record) -> String {
    // A struct of strings and integers always serializes.
    serde_json::to_string(record).unwrap_or_default()
}

fn decode(name: &str, json: &str) -> Result<Record, CronError> {
    serde_json::from_str(json).map_err(|e| CronError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// What `sluice cron list` and `GET /v1/cron` show of one cron.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CronView {
    /// Its name.
    pub name: String,
    /// The expression as written.
    pub schedule: String,
    /// The zone.
    pub time_zone: String,
    /// The channel.
    pub channel: String,
    /// The missed-tick policy.
    pub missed: Missed,
    /// The next instants, RFC 3339 UTC.
    pub next: Vec<String>,
    /// The last tick fired (RFC 3339 UTC), if any.
    pub last_tick: Option<String>,
    /// When it was fired.
    pub last_fired_at: Option<String>,
    /// Its message id (its jobs are listed under it).
    pub last_message_id: Option<String>,
    /// Ticks fired so far.
    pub fired: u64,
    /// Ticks skipped so far.
    pub skipped: u64,
}

/// How many next instants a view shows.
pub const NEXT_SHOWN: usize = 5;

/// The views of `entries`, with what `records` say (the records of crons
/// no longer configured are left out).
pub fn views(entries: &[CronEntry], records: &[(String, Record)], now: i64) -> Vec<CronView> {
    entries
        .iter()
        .map(|e| {
            let record = records.iter().find(|(n, _)| *n == e.name).map(|(_, r)| r);
            CronView {
                name: e.name.clone(),
                schedule: e.schedule.expression().to_owned(),
                time_zone: e.schedule.zone().to_owned(),
                channel: e.channel.clone(),
                missed: e.missed,
                next: e
                    .schedule
                    .upcoming(now, NEXT_SHOWN)
                    .into_iter()
                    .map(utc)
                    .collect(),
                last_tick: record.and_then(|r| r.fired).map(utc),
                last_fired_at: record.and_then(|r| r.fired_at).map(utc),
                last_message_id: record.and_then(|r| r.fired).map(|t| tick_id(&e.name, t)),
                fired: record.map_or(0, |r| r.fired_count),
                skipped: record.map_or(0, |r| r.skipped_count),
            }
        })
        .collect()
}
