//! The JetStream ledger: one record per cron in the KV bucket
//! [`BUCKET`], shared by every host; a tick is published to the work
//! stream before its record moves past it.
//!
//! Order of a fire: (1) publish the tick's message with `Nats-Msg-Id` =
//! its tick id, (2) update the record at the revision read (CAS). Two
//! hosts firing one tick both publish; the stream's duplicate window keeps
//! one copy, and one record update wins. A host killed between (1) and
//! (2) leaves the record behind: the next step of any host reads it, fires
//! the same tick again (same id: dropped within the window) and moves the
//! record. Killed before (1): nothing happened; the tick is fired by the
//! next step (late, so the `missed` policy applies).

use std::time::Duration;

use async_nats::jetstream::kv;

use super::{CronError, Ledger, Posted, Record, Versioned, Written, decode, encode};
use crate::store::NewMessage;
use crate::transport::JetStream;

/// The bucket of cron records (one key per cron name, no expiry).
pub const BUCKET: &str = "SLUICE_CRON";

/// Records in [`BUCKET`], ticks through the work stream.
#[derive(Clone)]
pub struct JetStreamLedger {
    js: JetStream,
    kv: kv::Store,
}

impl JetStreamLedger {
    /// Opens (or creates) the bucket.
    pub async fn open(js: JetStream, replicas: usize) -> Result<JetStreamLedger, CronError> {
        let context = async_nats::jetstream::new(js.client().clone());
        let kv = match context.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => context
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "sluice cron records: the last tick handled per cron".into(),
                    history: 1,
                    max_age: Duration::ZERO,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| CronError::Nats(format!("cannot create bucket {BUCKET}: {e}")))?,
        };
        Ok(JetStreamLedger { js, kv })
    }
}

impl Ledger for JetStreamLedger {
    async fn read(&self, name: &str) -> Result<Option<Versioned>, CronError> {
        read(&self.kv, name).await
    }

    async fn write(
        &self,
        name: &str,
        record: Record,
        expected: Option<u64>,
        tick: Option<NewMessage>,
    ) -> Result<Written, CronError> {
        let mut posted = Posted::Nothing;
        if let Some(tick) = tick {
            let published = self.js.publish_each(vec![tick]).await.into_iter().next();
            match published {
                Some(Ok(p)) => posted = Posted::from_duplicate(p.duplicate),
                Some(Err(e)) => return Err(CronError::Nats(e.to_string())),
                None => return Err(CronError::Nats("the tick got no answer".into())),
            }
        }
        let value = encode(&record).into_bytes().into();
        // Revision 0: the key must not exist yet.
        match self.kv.update(name, value, expected.unwrap_or(0)).await {
            Ok(_) => Ok(Written { won: true, posted }),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Written { won: false, posted })
            }
            Err(e) => Err(CronError::Nats(format!(
                "cannot write {BUCKET} {name}: {e}"
            ))),
        }
    }
}

/// The records of `entries` in [`BUCKET`] through `client` (no bucket
/// yet: none), for `sluice cron list` and the API.
pub async fn records_via(
    client: &async_nats::Client,
    entries: &[super::CronEntry],
) -> Result<Vec<(String, Record)>, CronError> {
    let context = async_nats::jetstream::new(client.clone());
    let Ok(kv) = context.get_key_value(BUCKET).await else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if let Some(v) = read(&kv, &e.record_key()).await? {
            out.push((e.name.clone(), v.record));
        }
    }
    Ok(out)
}

/// Cron `name`'s record in `kv`, if any.
async fn read(kv: &kv::Store, name: &str) -> Result<Option<Versioned>, CronError> {
    let entry = kv
        .entry(name)
        .await
        .map_err(|e| CronError::Nats(format!("cannot read {BUCKET} {name}: {e}")))?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => Ok(Some(Versioned {
            record: decode(name, &String::from_utf8_lossy(&e.value))?,
            revision: e.revision,
        })),
        _ => Ok(None),
    }
}
