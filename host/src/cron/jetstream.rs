//! The JetStream ledger: one record per cron in the KV bucket
//! [`BUCKET`], shared by every host; a tick is published to the work
//! stream before its record moves past it.
//!
//! Order of a fire (review #5: publishing first and moving the record
//! after left a tick fired twice when every host died in between and none
//! came back within the stream's duplicate window):
//! 1. move the record to the tick at the revision read (CAS), marking it
//!    `pending` with the stream's last sequence and the time: only the
//!    host whose write wins goes on, so two hosts never both publish;
//! 2. publish the tick's message with `Nats-Msg-Id` = its tick id;
//! 3. clear `pending` (CAS again).
//!
//! A host killed before (1): nothing happened; the next step fires the
//! tick (late, so the `missed` policy applies). Killed between (1) and
//! (3): the record says which tick may or may not be stored. The next
//! step of any host settles it (`settle_pending`): it takes the pending
//! tick on by CAS (so one host does this too); then, within the duplicate
//! window of when the tick was first marked pending (no copy can have been
//! stored before that, so every stored copy's window is still open), it
//! publishes the tick again (a copy stored already makes the server drop
//! this one); past the window it first looks for the
//! tick's message in the stream after the recorded sequence, on the
//! tick's channel subject (the work stream keeps messages for `max_age`,
//! limits retention), and publishes only if it is not there. Then it
//! clears `pending`.

use std::time::Duration;

use async_nats::jetstream::kv;

use super::{CronError, Ledger, Pending, Posted, Record, Versioned, Written, decode, encode};
use crate::message::now_ms;
use crate::store::NewMessage;
use crate::transport::{JetStream, STREAM};

/// Messages on a tick's channel subject looked through at most for a
/// pending tick (past that it is published: a duplicate is then possible,
/// and logged).
const SEARCHED: usize = 10_000;

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

impl JetStreamLedger {
    /// Writes `record` over `expected` (None: no record yet): its revision,
    /// or None if another host wrote first.
    async fn cas(
        &self,
        name: &str,
        record: &Record,
        expected: Option<u64>,
    ) -> Result<Option<u64>, CronError> {
        let value = encode(record).into_bytes().into();
        // Revision 0: the key must not exist yet.
        match self.kv.update(name, value, expected.unwrap_or(0)).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if crate::transport::cas::lost_race(&e) => Ok(None),
            Err(e) => Err(CronError::Nats(format!(
                "cannot write {BUCKET} {name}: {e}"
            ))),
        }
    }

    /// The work stream's (last sequence, duplicate window).
    async fn stream_now(&self) -> Result<(u64, Duration), CronError> {
        let context = async_nats::jetstream::new(self.js.client().clone());
        let stream = context
            .get_stream(STREAM)
            .await
            .map_err(|e| CronError::Nats(format!("cannot read stream {STREAM}: {e}")))?;
        let info = stream.cached_info();
        Ok((info.state.last_sequence, info.config.duplicate_window))
    }

    /// Publishes `tick` (its id as `Nats-Msg-Id`).
    async fn publish(&self, tick: NewMessage) -> Result<Posted, CronError> {
        match self.js.publish_each(vec![tick]).await.into_iter().next() {
            Some(Ok(p)) => Ok(Posted::from_duplicate(p.duplicate)),
            Some(Err(e)) => Err(CronError::Nats(e.to_string())),
            None => Err(CronError::Nats("the tick got no answer".into())),
        }
    }

    /// Whether `tick`'s message is in the work stream after sequence
    /// `after` (`None`: not known after [`SEARCHED`] messages).
    async fn stored(&self, tick: &NewMessage, after: u64) -> Result<Option<bool>, CronError> {
        let context = async_nats::jetstream::new(self.js.client().clone());
        let stream = context
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| CronError::Nats(format!("cannot read stream {STREAM}: {e}")))?;
        let subject =
            crate::transport::wire::target(&tick.message.channel, None, &tick.message.headers);
        let mut seq = after.saturating_add(1);
        for _ in 0..SEARCHED {
            let msg = match stream.get_first_raw_message_by_subject(&subject, seq).await {
                Ok(m) => m,
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                    ) =>
                {
                    return Ok(Some(false));
                }
                Err(e) => {
                    return Err(CronError::Nats(format!("cannot read stream {STREAM}: {e}")));
                }
            };
            let id = msg
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned());
            if id.as_deref() == Some(&*crate::transport::wire::encode(&tick.message.id)) {
                return Ok(Some(true));
            }
            seq = msg.sequence.saturating_add(1);
        }
        Ok(None)
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
        let Some(tick) = tick else {
            let won = self.cas(name, &record, expected).await?.is_some();
            return Ok(Written {
                won,
                posted: Posted::Nothing,
            });
        };
        // (1) The record first, pending: only the winner publishes.
        let (after_seq, _) = self.stream_now().await?;
        let pending = Record {
            pending: Some(Pending {
                tick: record.handled,
                after_seq,
                since: now_ms(),
            }),
            ..record.clone()
        };
        let Some(revision) = self.cas(name, &pending, expected).await? else {
            return Ok(Written {
                won: false,
                posted: Posted::Nothing,
            });
        };
        // (2) The tick; a failure leaves it pending, for the next step.
        let posted = self.publish(tick).await?;
        // (3) Done; a lost or failed write leaves it pending, settled by
        // the next step (the copy it publishes is dropped as a duplicate).
        if let Err(e) = self.cas(name, &record, Some(revision)).await {
            tracing::warn!(cron = %name, error = %e, "cannot clear a fired tick's pending mark; the next step does");
        }
        Ok(Written { won: true, posted })
    }

    async fn settle_pending(
        &self,
        name: &str,
        current: Versioned,
        tick: NewMessage,
    ) -> Result<Written, CronError> {
        let Some(pending) = current.record.pending.clone() else {
            return Ok(Written {
                won: false,
                posted: Posted::Nothing,
            });
        };
        let (_, window) = self.stream_now().await?;
        let now = now_ms();
        let fresh = within_first_window(&pending, now, window);
        let since = pending.since;
        let taken = Record {
            pending: Some(take_on(pending.clone())),
            ..current.record.clone()
        };
        // Taken on by one host (the CAS): hosts that read it next wait for
        // this one or take it on after it.
        let Some(revision) = self.cas(name, &taken, Some(current.revision)).await? else {
            return Ok(Written {
                won: false,
                posted: Posted::Nothing,
            });
        };
        let posted = if fresh {
            self.publish(tick).await?
        } else {
            match self.stored(&tick, pending.after_seq).await? {
                Some(true) => Posted::Duplicate,
                Some(false) => self.publish(tick).await?,
                None => {
                    tracing::warn!(cron = %name, tick = %tick.message.id, searched = SEARCHED, "cannot tell whether a pending tick was stored (too many messages on its channel since); publishing it, it may run twice");
                    self.publish(tick).await?
                }
            }
        };
        tracing::info!(cron = %name, tick = %tick_name(&taken), taken_on_ms_ago = now - since, ?posted, "settled a tick a host left pending");
        let done = Record {
            pending: None,
            ..current.record
        };
        let won = self.cas(name, &done, Some(revision)).await?.is_some();
        Ok(Written { won, posted })
    }
}

/// Whether a publish of `pending`'s tick at `now` is surely dropped by
/// the server if a copy is stored already: a copy can only have been
/// stored after the tick was first marked pending (`since`), and the
/// server's duplicate window runs from when a copy was stored (a dropped
/// duplicate does not extend it), so within half the window of `since`
/// (the other half to spare for this publish) every stored copy's window
/// is still open.
fn within_first_window(pending: &Pending, now: i64, window: Duration) -> bool {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    now.saturating_sub(pending.since) < window_ms / 2
}

/// `pending` as a host taking it on writes it back: unchanged, `since`
/// included (review3 R17: refreshing it at each take-on let a fourth
/// host, after three take-ons that each died before clearing, publish a
/// second copy past the first copy's window).
fn take_on(pending: Pending) -> Pending {
    pending
}

fn tick_name(record: &Record) -> String {
    record
        .pending
        .as_ref()
        .map_or_else(String::new, |p| super::utc(p.tick))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Review3 R17: take-ons at 0, 0.4, 0.8 and 1.2 windows after the
    /// first copy may have been stored: the fourth is past that copy's
    /// window, so it must search the stream, not publish blindly.
    #[test]
    fn take_ons_measure_freshness_from_the_first_pending_mark() {
        let window = Duration::from_secs(120);
        let w = 120_000;
        let mut pending = Pending {
            tick: 0,
            after_seq: 7,
            since: 1_000,
        };
        let mut fresh = Vec::new();
        for at in [0, w * 4 / 10, w * 8 / 10, w * 12 / 10] {
            fresh.push(within_first_window(&pending, 1_000 + at, window));
            pending = take_on(pending);
        }
        assert_eq!(fresh, [true, true, false, false]);
        assert_eq!(pending.since, 1_000);
    }
}
