//! Flow rules across every host of a JetStream deployment (`crate::flow`):
//! concurrency slots and rate buckets, shared in the key-value bucket
//! `SLUICE_FLOW`, each changed by compare-and-set on its revision.
//!
//! A key's slots are one entry, `c.<sha256 of handler and key>`: the
//! holders with the Unix ms their lease ends. A holder names one delivery
//! (job id @ host nonce # a counter of this host's deliveries), never a
//! job: the next slice of a job, or its re-queued run, may be pulled
//! before the last one's slot is given back, and under one name for both
//! that give-back would take the new delivery's slot with it (the key
//! would then run one more than its limit on another host). To
//! start a job a host reads the entry, drops expired holders, and, if
//! fewer than the limit remain, writes itself in, expecting the revision
//! it read (revision 0: no entry yet); a host that lost the race reads
//! again. So two hosts can never both take the last slot. Releasing is
//! the same read-modify-write without the holder. Leases last [`LEASE`]
//! and every host renews its holders every [`RENEW`], so:
//! - `kill -9` of a host: its holders are not renewed and expire within
//!   [`LEASE`]; their keys' slots come back without anyone's help;
//! - a nats-server restart: the bucket is a file-backed stream (synced as
//!   the server is configured), so the holders are there after it; while
//!   it is down no slot is granted (a job waits; it is not failed) and
//!   renewals fail, so a job running through an outage longer than
//!   [`LEASE`] may have its slot taken by another host meanwhile (the one
//!   case where a key may briefly run more than its limit);
//! - a lost answer to a write: the holder may or may not be in; a retry
//!   finds itself already in (idempotent), and a holder nobody renews
//!   expires.
//!
//! A slot is given back when its delivery is dropped, after the job's
//! outcome is recorded, and only then is this host's lease dropped (which
//! wakes the pump), so a woken pump finds the slot free.
//!
//! A rate bucket is one entry, `r.<sha256 of handler and key>`: its token
//! level and instant (`flow::Bucket`), taken from the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use async_nats::jetstream::AckKind;

use super::super::wire;
use super::super::{Delivery, Subscription, TransportError};
use super::JetStreamError;
use crate::flow::{Bucket, Gate, Hold, Lease, Rate, SharedPart, Waiting};
use crate::message::{Headers, now_ms};
use crate::store::{ClaimedJob, GatedReceipt, job_id_for};

/// The bucket.
pub const BUCKET: &str = "SLUICE_FLOW";

/// How long a holder counts without being renewed.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often a host renews its holders.
pub const RENEW: Duration = Duration::from_secs(5);

/// Read-modify-write rounds before a contended entry counts as "no".
const TRIES: usize = 32;

/// Entries renewed at once (each a read and a write): a host holding many
/// keys renews them in a round well inside a [`LEASE`].
const RENEW_AT_ONCE: usize = 32;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Slots {
    /// Holder -> Unix ms its lease ends.
    holders: BTreeMap<String, i64>,
}

/// The shared slots and buckets of this host's gated handlers.
#[derive(Clone)]
pub struct SharedFlow {
    kv: kv::Store,
    /// What to add to a job id to name this host's holder.
    nonce: String,
    /// This host's deliveries so far (a holder names one of them).
    deliveries: Arc<AtomicU64>,
    /// Entry key -> this host's holders in it, renewed every [`RENEW`].
    held: Arc<Mutex<HashMap<String, HashSet<String>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn entry_key(kind: char, handler: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(handler.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}.{hex}")
}

/// Whether a shared slot or token was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// Yes.
    Yes,
    /// No: the key is at its limit, or the bucket empty.
    No,
}

impl SharedFlow {
    /// Opens (or creates) the bucket.
    pub async fn open(client: &async_nats::Client, replicas: usize) -> Result<SharedFlow, String> {
        let context = async_nats::jetstream::new(client.clone());
        let kv = match context.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => context
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "Sluice flow control: concurrency slots and rate buckets".into(),
                    history: 1,
                    // An entry no host touched for a day holds nothing live
                    // (leases are seconds; buckets refill long before).
                    max_age: Duration::from_secs(86_400),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create key-value bucket {BUCKET}: {e}"))?,
        };
        Ok(SharedFlow {
            kv,
            nonce: crate::message::new_id(),
            deliveries: Arc::default(),
            held: Arc::default(),
        })
    }

    /// A new holder name for a delivery of `job_id`: never the same twice
    /// (see the module docs).
    pub fn holder(&self, job_id: &str) -> String {
        let n = self.deliveries.fetch_add(1, Ordering::Relaxed);
        format!("{job_id}@{}#{n}", self.nonce)
    }

    /// Reads an entry: its value and revision (0: none).
    async fn read(&self, key: &str) -> Result<(Bytes, u64), String> {
        match self.kv.entry(key).await {
            Ok(Some(e)) => Ok((e.value, e.revision)),
            Ok(None) => Ok((Bytes::new(), 0)),
            Err(e) => Err(format!("{BUCKET}: {e}")),
        }
    }

    /// Writes `value` over `revision`: false if another host wrote first.
    async fn write(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<bool, String> {
        match self.kv.update(key, Bytes::from(value), revision).await {
            Ok(_) => Ok(true),
            Err(e) if super::cas::lost_race(&e) => Ok(false),
            Err(e) => Err(format!("{BUCKET}: {e}")),
        }
    }

    /// Changes the slots entry `key` with `f` (which says whether to
    /// write), by compare-and-set; `f`'s verdict.
    async fn change_slots(
        &self,
        key: &str,
        mut f: impl FnMut(&mut Slots, i64) -> (bool, Got),
    ) -> Result<Got, String> {
        for _ in 0..TRIES {
            let (value, revision) = self.read(key).await?;
            let mut slots: Slots = serde_json::from_slice(&value).unwrap_or_default();
            let now = now_ms();
            slots.holders.retain(|_, until| *until > now);
            let (write, got) = f(&mut slots, now);
            if !write {
                return Ok(got);
            }
            let value = serde_json::to_vec(&slots).map_err(|e| e.to_string())?;
            if self.write(key, value, revision).await? {
                return Ok(got);
            }
        }
        Ok(Got::No)
    }

    /// Takes one of `limit` slots of `key` of `handler` for `holder` (a
    /// name from [`SharedFlow::holder`]).
    pub async fn acquire(
        &self,
        handler: &str,
        key: &str,
        limit: u32,
        holder: &str,
    ) -> Result<Got, String> {
        let entry = entry_key('c', handler, key);
        let holder = holder.to_owned();
        let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        let got = self
            .change_slots(&entry, |slots, now| {
                if slots.holders.contains_key(&holder)
                    || slots.holders.len() < usize::try_from(limit).unwrap_or(usize::MAX)
                {
                    slots.holders.insert(holder.clone(), now + lease);
                    (true, Got::Yes)
                } else {
                    (false, Got::No)
                }
            })
            .await?;
        if got == Got::Yes {
            lock(&self.held).entry(entry).or_default().insert(holder);
        }
        Ok(got)
    }

    /// Gives `holder`'s slot of `key` of `handler` back. A failure leaves
    /// it to expire.
    pub async fn release(&self, handler: &str, key: &str, holder: &str) {
        let entry = entry_key('c', handler, key);
        {
            let mut held = lock(&self.held);
            if let Some(h) = held.get_mut(&entry) {
                h.remove(holder);
                if h.is_empty() {
                    held.remove(&entry);
                }
            }
        }
        let released = self
            .change_slots(&entry, |slots, _| {
                (slots.holders.remove(holder).is_some(), Got::Yes)
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(%handler, error = %e, "cannot release a concurrency slot; it expires by itself");
        }
    }

    /// Takes a token from `handler`'s bucket `key` (`""`: the handler's
    /// own) under `rate`.
    pub async fn take_token(&self, handler: &str, key: &str, rate: &Rate) -> Result<Got, String> {
        let entry = entry_key('r', handler, key);
        for _ in 0..TRIES {
            let (value, revision) = self.read(&entry).await?;
            let now = now_ms();
            let bucket = serde_json::from_slice::<Bucket>(&value)
                .unwrap_or_else(|_| Bucket::full(rate, now));
            let (got, after) = bucket.take(rate, now, 1);
            if got == 0 {
                return Ok(Got::No);
            }
            let value = serde_json::to_vec(&after).map_err(|e| e.to_string())?;
            if self.write(&entry, value, revision).await? {
                return Ok(Got::Yes);
            }
        }
        Ok(Got::No)
    }

    /// Gives a token taken for a start that did not happen (a redelivery of
    /// a job done already) back to `handler`'s bucket `key`.
    pub async fn give_token_back(
        &self,
        handler: &str,
        key: &str,
        rate: &Rate,
    ) -> Result<(), String> {
        let entry = entry_key('r', handler, key);
        for _ in 0..TRIES {
            let (value, revision) = self.read(&entry).await?;
            let Ok(bucket) = serde_json::from_slice::<Bucket>(&value) else {
                // No bucket (it expired): a new one is full anyway.
                return Ok(());
            };
            let after = bucket.give_back(rate, now_ms(), 1);
            let value = serde_json::to_vec(&after).map_err(|e| e.to_string())?;
            if self.write(&entry, value, revision).await? {
                return Ok(());
            }
        }
        Err("too contended".into())
    }

    /// Holders of `key` of `handler` now, live ones only (for tests and
    /// operators' checks).
    pub async fn holders(&self, handler: &str, key: &str) -> Result<Vec<String>, String> {
        let (value, _) = self.read(&entry_key('c', handler, key)).await?;
        let slots: Slots = serde_json::from_slice(&value).unwrap_or_default();
        let now = now_ms();
        Ok(slots
            .holders
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(h, _)| h)
            .collect())
    }

    /// Renews this host's holders of one entry: those still ours (not
    /// released meanwhile). A holder that expired meanwhile (the server was
    /// out of reach longer than a lease) is written back as well: it is
    /// still running here.
    async fn renew_entry(&self, entry: &str, holders: &[String]) -> Result<Got, String> {
        let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        self.change_slots(entry, |slots, now| {
            let mut write = false;
            for h in holders {
                let ours = lock(&self.held)
                    .get(entry)
                    .is_some_and(|set| set.contains(h));
                if ours {
                    slots.holders.insert(h.clone(), now + lease);
                    write = true;
                }
            }
            (write, Got::Yes)
        })
        .await
    }

    /// Renews this host's holders every [`RENEW`], forever (a supervised
    /// task), [`RENEW_AT_ONCE`] entries at a time.
    pub async fn renew_forever(self) {
        loop {
            tokio::time::sleep(RENEW).await;
            let held: Vec<(String, Vec<String>)> = lock(&self.held)
                .iter()
                .map(|(k, h)| (k.clone(), h.iter().cloned().collect()))
                .collect();
            let started = Instant::now();
            let entries = held.len();
            let this = &self;
            futures_util::stream::iter(held)
                .for_each_concurrent(RENEW_AT_ONCE, |(entry, holders)| async move {
                    if let Err(e) = this.renew_entry(&entry, &holders).await {
                        tracing::warn!(error = %e, "cannot renew concurrency slots; trying again");
                    }
                })
                .await;
            if started.elapsed() > LEASE / 3 {
                tracing::warn!(entries, took = ?started.elapsed(), lease = ?LEASE, "renewing concurrency slots took over a third of their lease; leases may lapse while jobs run");
            }
        }
    }
}

/// A shared slot this host holds for a started delivery: given back when
/// its hold is dropped ([`SharedPart::release`]), or, dropped on its own
/// (the delivery did not start after all), in a task.
pub struct SharedSlot {
    pub(super) flow: SharedFlow,
    pub(super) handler: String,
    pub(super) key: String,
    pub(super) holder: String,
}

impl SharedSlot {
    /// Takes the slot's names out, so its `Drop` gives nothing back.
    fn take(&mut self) -> (SharedFlow, String, String, String) {
        (
            self.flow.clone(),
            std::mem::take(&mut self.handler),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.holder),
        )
    }

    /// Gives the slot back in a task (a drop cannot wait), then drops
    /// `lease`, if any.
    fn give_back(&mut self, lease: Option<Lease>) {
        let (flow, handler, key, holder) = self.take();
        if holder.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    flow.release(&handler, &key, &holder).await;
                    drop(lease);
                });
            }
            // No runtime (the process is ending): the slot expires.
            Err(_) => drop(lease),
        }
    }
}

impl SharedPart for SharedSlot {
    fn release(mut self: Box<Self>, lease: Lease) {
        self.give_back(Some(lease));
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.give_back(None);
    }
}

/// How long a job turned back waits before it is offered again: from
/// [`FIRST_WAIT`], doubling per turn on this host, up to [`LAST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(250);
const LAST_WAIT: Duration = Duration::from_secs(2);

/// Jobs whose turns this host counts at most (a bound on memory).
const MAX_COUNTED: usize = 100_000;

impl super::JetStream {
    /// The shared bucket, opened (and its renewals started) on first use.
    async fn shared_flow(&self) -> Result<SharedFlow, String> {
        let inner = &self.inner;
        inner
            .flow
            .get_or_try_init(|| async {
                let flow = SharedFlow::open(&inner.client, inner.settings.replicas).await?;
                // For the life of the process: after a stop, leases that
                // were not given back expire by themselves.
                let renewing = flow.clone();
                tokio::spawn(crate::supervise::supervised(
                    "flow slot renewals".into(),
                    tokio_util::sync::CancellationToken::new(),
                    move || renewing.clone().renew_forever(),
                ));
                Ok::<_, String>(flow)
            })
            .await
            .cloned()
    }

    /// Up to `max` deliveries of `sub` that `gate`'s rules let start. The
    /// shared slot and rate token are taken before the delivery is
    /// recorded (so a job's recorded start is never before its slot); one
    /// over a limit is recorded as waiting and turned back
    /// ([`JetStream::turn_back`]).
    pub(super) async fn fetch_gated_deliveries(
        &self,
        sub: &Subscription,
        max: usize,
        gate: &Arc<Gate>,
    ) -> Result<Vec<Delivery>, TransportError> {
        let flow = self
            .shared_flow()
            .await
            .map_err(|reason| JetStreamError::Fetch {
                consumer: super::consumer_name(sub),
                reason,
            })?;
        let pulled = self.pull(sub, max).await?;
        let mut msgs = Vec::with_capacity(pulled.len());
        let mut holds = Vec::with_capacity(pulled.len());
        // The bucket each admitted delivery took a token from.
        let mut tokens = Vec::with_capacity(pulled.len());
        let mut waits = Vec::with_capacity(pulled.len());
        let mut batch = Vec::with_capacity(pulled.len());
        for (msg, delivered) in pulled {
            let job_id = job_id_for(&delivered.message.id, &sub.consumer);
            let message = &delivered.message;
            // Not due yet: the store carries it on to its time; it starts
            // nothing now, so it takes no slot and no token.
            if delivered.not_before.is_some_and(|t| t > now_ms()) {
                holds.push(None);
                tokens.push(None);
                waits.push(None);
                batch.push((delivered, None));
                msgs.push(msg);
                continue;
            }
            match admit(&flow, gate, &job_id, &message.headers, &message.body).await {
                Ok((hold, token)) => {
                    holds.push(Some(hold));
                    tokens.push(token);
                    waits.push(None);
                    batch.push((delivered, None));
                }
                Err(reason) => {
                    let wait = self.wait_for(&job_id);
                    let at = now_ms().saturating_add(millis(wait));
                    holds.push(None);
                    tokens.push(None);
                    waits.push(Some((reason.clone(), wait)));
                    batch.push((delivered, Some((reason, at))));
                }
            }
            msgs.push(msg);
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = batch.iter().map(|(d, _)| d.message.id.clone()).collect();
        let receipts = self.inner.store.receive_gated(batch).await?;
        let mut out = Vec::new();
        for (((((msg, id), hold), token), receipt), wait) in msgs
            .into_iter()
            .zip(ids)
            .zip(holds)
            .zip(tokens)
            .zip(receipts)
            .zip(waits)
        {
            match (receipt, wait) {
                (GatedReceipt::Waiting(job), Some((reason, wait))) => {
                    gate.note_waited(reason.starts_with("waiting: rate"));
                    self.turn_back(sub, &msg, &job, &reason, wait).await;
                }
                (GatedReceipt::Waiting(_), None) => {}
                (GatedReceipt::Received(received), _) => {
                    if let Some(mut delivery) = self.on_received(sub, msg, &id, received).await {
                        lock(&self.inner.flow_turns).remove(&delivery.job.job_id);
                        delivery.hold = hold;
                        out.push(delivery);
                    } else if let (Some(key), Some(r)) = (token, &gate.spec().rate) {
                        // Done with already (a redelivery): it started
                        // nothing, so its token goes back. (Its hold drops
                        // here: the slot goes back too.)
                        if let Err(e) = flow.give_token_back(gate.handler(), &key, &r.rate).await {
                            tracing::debug!(handler = %gate.handler(), error = %e, "cannot give a rate token back");
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// How long `job_id` waits this time before it is offered again: from
    /// [`FIRST_WAIT`], doubling each time this host turned it back, up to
    /// [`LAST_WAIT`].
    fn wait_for(&self, job_id: &str) -> Duration {
        let mut t = lock(&self.inner.flow_turns);
        if t.len() >= MAX_COUNTED {
            t.clear();
        }
        let n = t.entry(job_id.to_owned()).or_default();
        *n = n.saturating_add(1);
        FIRST_WAIT
            .saturating_mul(1 << n.saturating_sub(1).min(8))
            .min(LAST_WAIT)
    }

    /// A delivery recorded as waiting: carried on as a copy addressed to
    /// its handler, scheduled for when its record says it runs, with the
    /// attempts it made so far; then acked. Not a NAK: a redelivery to
    /// another host would count as an attempt there. The copy's dedupe id
    /// names this delivery's stream sequence, so a crash between the copy
    /// and the ack makes the second copy the same one. Without schedules
    /// (or if the copy fails) it is a NAK for the wait.
    ///
    /// The copy is due `wait` from now, not from when the wait was decided:
    /// the admissions of the rest of the pull and the store's write come in
    /// between, and a due time passed meanwhile would make it a NAK, which
    /// another host counts as an attempt.
    async fn turn_back(
        &self,
        sub: &Subscription,
        msg: &async_nats::jetstream::Message,
        job: &ClaimedJob,
        reason: &str,
        wait: Duration,
    ) {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let dedupe = format!("{}/{}/wait/{seq}", job.message.id, sub.consumer);
        let now = now_ms();
        let at = now.saturating_add(millis(wait));
        let copied = match self.wants_schedule(at, now) {
            Ok(true) => {
                let target =
                    wire::target_of(&sub.channel, Some(&sub.consumer), msg.headers.as_ref());
                let headers =
                    wire::forwarded_headers(msg.headers.as_ref(), &job.message.id, &dedupe)
                        .and_then(|mut h| {
                            wire::set_header(
                                &mut h,
                                crate::message::ATTEMPT_HEADER,
                                &job.attempt.saturating_sub(1).to_string(),
                            )?;
                            Ok(h)
                        });
                match headers {
                    Ok(headers) => match self
                        .publish_schedule(&target, headers, msg.payload.clone(), at, &dedupe)
                        .await
                    {
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(false) => Err("the server has no schedules".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        let settled = match copied {
            Ok(()) => msg.ack().await,
            Err(e) => {
                tracing::warn!(job_id = %job.job_id, error = %e, "cannot carry a waiting job on as a scheduled copy; handing it back with a NAK (another host counts that as an attempt)");
                msg.ack_with(AckKind::Nak(Some(wait))).await
            }
        };
        if let Err(e) = settled {
            tracing::debug!(job_id = %job.job_id, error = %e, "cannot settle a waiting delivery; it comes back by itself");
        }
        tracing::debug!(job_id = %job.job_id, %reason, ?wait, "waiting");
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Takes job `job_id`'s shared slot and rate token under `gate`'s rules
/// (with the bucket the token came from, if any), or says why it waits.
async fn admit(
    flow: &SharedFlow,
    gate: &Arc<Gate>,
    job_id: &str,
    headers: &Headers,
    body: &[u8],
) -> Result<(Hold, Option<String>), String> {
    let spec = gate.spec();
    let key = spec.fair_key(headers, body);
    let mut slot = None;
    if let Some(c) = &spec.concurrency {
        let holder = flow.holder(job_id);
        match flow.acquire(gate.handler(), &key, c.limit, &holder).await {
            Ok(Got::Yes) => {
                slot = Some(SharedSlot {
                    flow: flow.clone(),
                    handler: gate.handler().to_owned(),
                    key: key.clone(),
                    holder,
                });
            }
            Ok(Got::No) => return Err(Waiting::Concurrency(key).to_string()),
            Err(e) => return Err(format!("waiting: shared flow state unavailable ({e})")),
        }
    }
    let mut token = None;
    if let Some(r) = &spec.rate {
        let rate_key = spec.rate_key(headers, body);
        match flow.take_token(gate.handler(), &rate_key, &r.rate).await {
            Ok(Got::Yes) => token = Some(rate_key),
            // The slot (if any) is dropped, so given back.
            Ok(Got::No) => return Err(Waiting::Rate.to_string()),
            Err(e) => return Err(format!("waiting: shared flow state unavailable ({e})")),
        }
    }
    let lease = gate.admit(job_id, key);
    Ok((
        Hold::new(lease, slot.map(|s| Box::new(s) as Box<dyn SharedPart>)),
        token,
    ))
}
