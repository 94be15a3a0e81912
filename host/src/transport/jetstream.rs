//! The JetStream transport: what several hosts on several machines share.
//!
//! One stream `SLUICE` holds every channel (`sluice.<channel>`) and the
//! continuations addressed to one handler (`sluice-cont.<handler>.<channel>`);
//! `SLUICE_DLQ` keeps dead letters. Each (channel, handler) pair is a durable
//! pull consumer: hosts sharing it compete for its messages, and each handler
//! of an event channel has its own, so each gets a copy.
//!
//! A delivery becomes a job row in this host's store on receipt (the inbox):
//! a message whose job already finished here is acked without running it
//! again. Acks, naks and terms go out only after the store committed the
//! outcome. Posts and continuations leave through the store's outbox,
//! published by [`JetStream::relay`] once their transaction committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::TryStreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Envelope};
use super::{Delivery, Receipt, Settle, Subscription, Transport, TransportError};
use crate::message::{CURSOR_HEADER, SLICE_HEADER, now_ms};
use crate::store::{Delivered, JobRecord, NewMessage, Published, Received, Store};

/// The work stream's name.
pub const STREAM: &str = "SLUICE";
/// The dead-letter stream's name.
pub const DLQ_STREAM: &str = "SLUICE_DLQ";

/// JetStream failures, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A stream could not be created or read.
    #[error("JetStream stream {name}: {reason}")]
    Stream {
        /// Stream name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A stream exists with settings sluice cannot work with.
    #[error(
        "JetStream stream {name} exists with incompatible settings: {reason}; fix or delete it"
    )]
    Incompatible {
        /// Stream name.
        name: String,
        /// What differs.
        reason: String,
    },
    /// A consumer could not be created or updated.
    #[error("JetStream consumer {name}: {reason}")]
    Consumer {
        /// Consumer name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Publishing failed.
    #[error("publishing to {subject} failed: {reason}")]
    Publish {
        /// Subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// Pulling messages failed.
    #[error("fetching from {consumer} failed: {reason}")]
    Fetch {
        /// Consumer name.
        consumer: String,
        /// Why.
        reason: String,
    },
}

/// Connection and stream settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamSettings {
    /// Server URL(s), comma separated.
    pub url: String,
    /// How long a delivery may go without an ack or heartbeat before the
    /// server hands it to another host.
    pub ack_wait: Duration,
    /// Stream replicas (3 in production clusters).
    pub replicas: usize,
    /// How long the stream keeps messages.
    pub max_age: Duration,
    /// Window in which a re-published message id is dropped as a duplicate.
    pub duplicate_window: Duration,
    /// How long one pull waits for messages before returning empty.
    pub fetch_wait: Duration,
}

impl Default for JetStreamSettings {
    fn default() -> Self {
        JetStreamSettings {
            url: "nats://127.0.0.1:4222".into(),
            ack_wait: Duration::from_secs(30),
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            fetch_wait: Duration::from_millis(500),
        }
    }
}

/// Concurrency per handler name, which becomes its consumer's
/// `max_ack_pending`.
pub type ConcurrencyOf = Arc<dyn Fn(&str) -> usize + Send + Sync>;

/// The JetStream transport; cheap to clone.
#[derive(Clone)]
pub struct JetStream {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    store: Store,
    settings: JetStreamSettings,
    concurrency: ConcurrencyOf,
    consumers: Mutex<HashMap<Subscription, consumer::PullConsumer>>,
    relay_wake: Notify,
}

impl JetStream {
    /// Connects, and creates or verifies the streams.
    pub async fn connect(
        settings: JetStreamSettings,
        store: Store,
        concurrency: ConcurrencyOf,
    ) -> Result<JetStream, JetStreamError> {
        let url = settings.url.clone();
        let client = async_nats::ConnectOptions::new()
            .name("sluice")
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting (in-flight acks may be lost and their messages redelivered; the inbox keeps effects exactly-once)")
                    }
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            })
            .connect(&url)
            .await
            .map_err(|e| JetStreamError::Connect {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        ensure_stream(
            &js,
            STREAM,
            vec![
                format!("{}.>", wire::PREFIX),
                format!("{}.>", wire::CONT_PREFIX),
            ],
            &settings,
        )
        .await?;
        ensure_stream(
            &js,
            DLQ_STREAM,
            vec![format!("{}.>", wire::DLQ_PREFIX)],
            &settings,
        )
        .await?;
        Ok(JetStream {
            inner: Arc::new(Inner {
                client,
                js,
                store,
                settings,
                concurrency,
                consumers: Mutex::new(HashMap::new()),
                relay_wake: Notify::new(),
            }),
        })
    }

    /// The NATS client (for tests and diagnostics).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Publishes committed outbox rows, in order, until `shutdown`; then
    /// flushes what is due and returns.
    pub async fn relay(&self, shutdown: CancellationToken) {
        let store = &self.inner.store;
        loop {
            let sent = match self.relay_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: publishing failed; will retry");
                    0
                }
            };
            if sent > 0 {
                continue;
            }
            if shutdown.is_cancelled() {
                return;
            }
            // Sleep until woken by a commit, the next delayed row is due, or
            // a poll interval passes (rows written by another process).
            let wait = match store.outbox_next_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 200) as u64),
                _ => Duration::from_millis(200),
            };
            tokio::select! {
                _ = self.inner.relay_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// One pass of the relay; returns how many rows it published.
    async fn relay_once(&self) -> Result<usize, JetStreamError> {
        let store = &self.inner.store;
        let rows = store
            .outbox_due(now_ms(), 256)
            .await
            .map_err(|e| JetStreamError::Publish {
                subject: "outbox".into(),
                reason: e.to_string(),
            })?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            let subject = match &row.consumer {
                Some(c) => wire::continuation_subject(c, &row.channel),
                None => wire::subject(&row.channel),
            };
            let headers = wire::headers(&Envelope {
                message: &row.message,
                dedupe_id: &row.id,
                not_before: None,
                expires_at: row.expires_at,
            });
            let ack = self
                .inner
                .js
                .publish_with_headers(subject.clone(), headers, row.message.body.clone().into())
                .await
                .map_err(|e| JetStreamError::Publish {
                    subject: subject.clone(),
                    reason: e.to_string(),
                })?;
            pending.push((row.seq, subject, ack));
        }
        let mut sent = Vec::with_capacity(pending.len());
        let mut failure = None;
        for (seq, subject, ack) in pending {
            match ack.await {
                Ok(_) => sent.push(seq),
                Err(e) => {
                    failure = Some(JetStreamError::Publish {
                        subject,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        let n = sent.len();
        store
            .outbox_mark_sent(sent, now_ms())
            .await
            .map_err(|e| JetStreamError::Publish {
                subject: "outbox".into(),
                reason: e.to_string(),
            })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Re-publishes a job (replayed from the dead letters) to its handler
    /// only, resuming from its cursor.
    pub async fn replay(&self, job: &JobRecord) -> Result<(), JetStreamError> {
        let mut headers = job.headers.clone();
        headers.retain(|(k, _)| k != CURSOR_HEADER && k != SLICE_HEADER);
        if let Some(c) = &job.cursor {
            headers.push((CURSOR_HEADER.into(), c.clone()));
        }
        headers.push((SLICE_HEADER.into(), job.slices.to_string()));
        let message = crate::message::Message {
            id: job.message_id.clone(),
            channel: job.channel.clone(),
            kind: crate::message::MessageKind::parse(&job.kind).unwrap_or_default(),
            headers,
            body: job.body.clone().into_bytes(),
        };
        let dedupe = format!("{}/{}/replay/{}", job.message_id, job.consumer, job.replays);
        let subject = wire::continuation_subject(&job.consumer, &job.channel);
        self.publish_one(&subject, &message, &dedupe, None, job.expires_at)
            .await
            .map(|_| ())
    }

    async fn publish_one(
        &self,
        subject: &str,
        message: &crate::message::Message,
        dedupe_id: &str,
        not_before: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<bool, JetStreamError> {
        let err = |e: String| JetStreamError::Publish {
            subject: subject.to_owned(),
            reason: e,
        };
        let headers = wire::headers(&Envelope {
            message,
            dedupe_id,
            not_before,
            expires_at,
        });
        let ack = self
            .inner
            .js
            .publish_with_headers(subject.to_owned(), headers, message.body.clone().into())
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(ack.duplicate)
    }

    fn consumer(&self, sub: &Subscription) -> Option<consumer::PullConsumer> {
        self.inner
            .consumers
            .lock()
            .ok()
            .and_then(|m| m.get(sub).cloned())
    }

    /// Ends a message that cannot even be decoded: kept as a dead letter,
    /// never redelivered.
    async fn reject_undecodable(&self, msg: &jetstream::Message, reason: &str) {
        tracing::error!(subject = %msg.subject, %reason, "undecodable message dead-lettered");
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(wire::H_ERROR, reason);
        let subject = wire::dlq_subject(msg.subject.as_str());
        if let Ok(ack) = self
            .inner
            .js
            .publish_with_headers(subject, headers, msg.payload.clone())
            .await
        {
            let _ = ack.await;
        }
        let _ = msg.ack_with(AckKind::Term).await;
    }
}

/// The durable consumer name of `sub`: readable, unique, and made only of
/// characters NATS allows (a short hash tells `a.b` from `a_b`).
pub fn consumer_name(sub: &Subscription) -> String {
    use sha2::{Digest, Sha256};
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let digest = Sha256::digest(format!("{}\0{}", sub.consumer, sub.channel).as_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}__{}__{tag}", clean(&sub.consumer), clean(&sub.channel))
}

async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: Vec<String>,
    settings: &JetStreamSettings,
) -> Result<(), JetStreamError> {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: subjects.clone(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let s = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| JetStreamError::Stream {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    let have = &s.cached_info().config;
    let incompatible = |reason: String| JetStreamError::Incompatible {
        name: name.to_owned(),
        reason,
    };
    if let Some(missing) = subjects.iter().find(|w| !have.subjects.contains(w)) {
        return Err(incompatible(format!(
            "subjects are {:?}, missing {missing:?}",
            have.subjects
        )));
    }
    if have.retention != stream::RetentionPolicy::Limits {
        return Err(incompatible(format!(
            "retention is {:?}; sluice needs limits (a durable consumer per handler reads every message)",
            have.retention
        )));
    }
    if have.storage != stream::StorageType::File {
        tracing::warn!(
            stream = name,
            "stream uses memory storage: messages are lost if the server restarts"
        );
    }
    Ok(())
}

fn nats_err(consumer: &str) -> impl Fn(String) -> JetStreamError + '_ {
    move |reason| JetStreamError::Fetch {
        consumer: consumer.to_owned(),
        reason,
    }
}

impl Transport for JetStream {
    async fn register(&self, subscriptions: &[Subscription]) -> Result<(), TransportError> {
        let stream =
            self.inner
                .js
                .get_stream(STREAM)
                .await
                .map_err(|e| JetStreamError::Stream {
                    name: STREAM.into(),
                    reason: e.to_string(),
                })?;
        for sub in subscriptions {
            let name = consumer_name(sub);
            let err = |e: String| JetStreamError::Consumer {
                name: name.clone(),
                reason: e,
            };
            let config = consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!(
                    "sluice handler {} on {}",
                    sub.consumer, sub.channel
                )),
                filter_subjects: vec![
                    wire::subject(&sub.channel),
                    wire::continuation_subject(&sub.consumer, &sub.channel),
                ],
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.inner.settings.ack_wait,
                max_deliver: -1,
                max_ack_pending: (self.inner.concurrency)(&sub.consumer) as i64,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            };
            let mut c: consumer::PullConsumer = stream
                .get_or_create_consumer(&name, config.clone())
                .await
                .map_err(|e| err(e.to_string()))?;
            let info = c
                .info()
                .await
                .map_err(|e| err(e.to_string()))?
                .config
                .clone();
            if info.ack_wait != config.ack_wait
                || info.max_ack_pending != config.max_ack_pending
                || info.filter_subjects != config.filter_subjects
            {
                tracing::info!(consumer = %name, "updating consumer settings");
                c = stream
                    .update_consumer(config)
                    .await
                    .map_err(|e| err(e.to_string()))?;
            }
            if let Ok(mut map) = self.inner.consumers.lock() {
                map.insert(sub.clone(), c);
            }
        }
        Ok(())
    }

    async fn publish(&self, messages: Vec<NewMessage>) -> Result<Vec<Published>, TransportError> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let now = now_ms();
            let duplicate = self
                .publish_one(
                    &wire::subject(&m.message.channel),
                    &m.message,
                    &m.message.id,
                    (m.visible_at > now).then_some(m.visible_at),
                    m.expires_at,
                )
                .await?;
            out.push(Published {
                message_id: m.message.id,
                job_ids: Vec::new(),
                duplicate,
            });
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        subscription: &Subscription,
        max: usize,
    ) -> Result<Vec<Delivery>, TransportError> {
        let Some(consumer) = self.consumer(subscription) else {
            tokio::time::sleep(self.inner.settings.fetch_wait).await;
            return Ok(Vec::new());
        };
        let name = consumer_name(subscription);
        // Take what is there now without waiting (a batch pull would hold
        // its messages until it is full or expires); only when nothing is
        // there, wait up to `fetch_wait` for the first message to arrive.
        // Both pulls are bounded on the client too: a pull request lost in a
        // reconnect would otherwise never be answered.
        let wait = self.inner.settings.fetch_wait;
        let pull = |batch: bool| {
            let consumer = consumer.clone();
            let err = nats_err(&name);
            async move {
                let stream = if batch {
                    consumer
                        .batch()
                        .max_messages(1)
                        .expires(wait)
                        .messages()
                        .await
                } else {
                    consumer
                        .fetch()
                        .max_messages(max)
                        .expires(wait)
                        .messages()
                        .await
                }
                .map_err(|e| err(e.to_string()))?;
                match tokio::time::timeout(wait * 2, stream.try_collect::<Vec<_>>()).await {
                    Ok(r) => r.map_err(|e| err(e.to_string())),
                    Err(_) => Ok(Vec::new()),
                }
            }
        };
        let mut messages: Vec<jetstream::Message> = pull(false).await?;
        if messages.is_empty() {
            messages = pull(true).await?;
        }
        // The whole pull is recorded in the inbox in one store operation
        // (one commit round trip), not one per message.
        let mut pulled = Vec::with_capacity(messages.len());
        let mut delivered = Vec::with_capacity(messages.len());
        for msg in messages {
            let decoded =
                match wire::decode(msg.subject.as_str(), msg.headers.as_ref(), &msg.payload) {
                    Ok(d) => d,
                    Err(reason) => {
                        self.reject_undecodable(&msg, &reason).await;
                        continue;
                    }
                };
            delivered.push(Delivered {
                consumer: subscription.consumer.clone(),
                message: decoded.message,
                slice: decoded.slice,
                cursor: decoded.cursor,
                not_before: decoded.not_before,
                expires_at: decoded.expires_at,
            });
            pulled.push(msg);
        }
        if delivered.is_empty() {
            return Ok(Vec::new());
        }
        let received = self.inner.store.receive_all(delivered).await?;
        let mut out = Vec::with_capacity(received.len());
        for (msg, received) in pulled.into_iter().zip(received) {
            match received {
                Received::Run(job) => out.push(Delivery {
                    job,
                    receipt: Receipt::JetStream(Box::new(msg)),
                }),
                Received::Done(state) => {
                    tracing::debug!(%state, "redelivered message already handled here; acking");
                    let _ = msg.ack().await;
                }
                Received::NotYet(at) => {
                    let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
        Ok(out)
    }

    async fn wait(&self, _subscription: &Subscription, _timeout: Duration) {
        // `fetch` already waited `fetch_wait` for messages.
    }

    async fn settle(&self, delivery: &Delivery, settle: Settle) -> Result<(), TransportError> {
        // Whatever was committed may have put rows in the outbox.
        self.inner.relay_wake.notify_one();
        let Receipt::JetStream(msg) = &delivery.receipt else {
            return Ok(());
        };
        let ack = |kind| async move {
            msg.ack_with(kind)
                .await
                .map_err(|e| JetStreamError::Publish {
                    subject: "ack".into(),
                    reason: e.to_string(),
                })
        };
        match settle {
            Settle::Ack | Settle::Continue { .. } => ack(AckKind::Ack).await?,
            Settle::Nak { delay } => ack(AckKind::Nak(Some(delay))).await?,
            Settle::DeadLetter { reason } => {
                let mut headers = msg.headers.clone().unwrap_or_default();
                headers.insert(wire::H_ERROR, reason.as_str());
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{}/{}/dead", delivery.job.message.id, delivery.job.consumer).as_str(),
                );
                let subject = wire::dlq_subject(&delivery.job.message.channel);
                self.inner
                    .js
                    .publish_with_headers(subject.clone(), headers, msg.payload.clone())
                    .await
                    .map_err(|e| JetStreamError::Publish {
                        subject: subject.clone(),
                        reason: e.to_string(),
                    })?
                    .await
                    .map_err(|e| JetStreamError::Publish {
                        subject,
                        reason: e.to_string(),
                    })?;
                ack(AckKind::Term).await?;
            }
        }
        Ok(())
    }

    fn heartbeat_every(&self) -> Option<Duration> {
        Some(self.inner.settings.ack_wait / 2)
    }

    async fn in_progress(&self, delivery: &Delivery) {
        if let Receipt::JetStream(msg) = &delivery.receipt
            && let Err(e) = msg.ack_with(AckKind::Progress).await
        {
            tracing::warn!(job_id = %delivery.job.job_id, error = %e, "in-progress ack failed");
        }
    }

    fn uses_outbox(&self) -> bool {
        true
    }
}
