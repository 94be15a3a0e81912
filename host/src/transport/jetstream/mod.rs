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
//!
//! Files: `streams` (stream and consumer setup), `fetch` (pulling and the
//! inbox), `settle` (ack, NAK, dead letters), `relay` (the outbox),
//! `publish` (direct publishes: posts from the CLI and API, replays),
//! `schedule` (delays kept by the server: ADR-51 message schedules),
//! `priority` (a consumer per priority level, and the pull that shares
//! its room between them).

pub(crate) mod cas;
mod debounce;
mod fetch;
mod flow;
mod priority;
mod publish;
mod relay;
mod schedule;
mod settle;
mod state;
mod state_commit;
mod state_move;
mod streams;
mod unique;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use tokio::sync::Notify;

pub use flow::{Got, SharedFlow};
pub use state::{SharedState, key_subject as state_key_subject};
pub use streams::consumer_name;

use super::wire;
use super::{Delivery, Receipt, Settle, Subscription, Transport, TransportError};
use crate::store::{NewMessage, Published, Store};

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
    /// The server refused this client (credentials, TLS): trying again
    /// cannot help.
    #[error("NATS at {url} refused the connection: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The URL is not a NATS server URL: trying again cannot help.
    #[error("[nats] url {url:?} is not a NATS server URL: {reason}")]
    BadUrl {
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
    /// The server lacks what the config asks for (shared state on a
    /// nats-server older than 2.12): an operator's to fix.
    #[error("{0}")]
    Unsupported(String),
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
    /// The message can never be published as it is (too large for the
    /// server, a header or subject NATS cannot carry): the producer's
    /// mistake, refused before anything was sent.
    #[error("message for {subject} refused: {reason}")]
    Rejected {
        /// Subject.
        subject: String,
        /// Why.
        reason: wire::WireError,
    },
    /// This host's store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A uniqueness key could not be claimed or read (`unique.rs`).
    #[error("uniqueness key: {0}")]
    Unique(String),
}

impl JetStreamError {
    /// Whether trying again later may succeed: an unreachable server, a
    /// cluster electing leaders, a stream or consumer request that timed
    /// out. A refused connection and a stream whose settings conflict with
    /// Sluice's are an operator's to fix.
    pub fn heals(&self) -> bool {
        !matches!(
            self,
            JetStreamError::Refused { .. }
                | JetStreamError::BadUrl { .. }
                | JetStreamError::Incompatible { .. }
                | JetStreamError::Unsupported(_)
        )
    }
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
    /// Plugin state lives in the `SLUICE_STATE` stream, one store for
    /// every host (`state.rs`), instead of in each host's SQLite (the
    /// default; `false`: each host's own).
    pub shared_state: bool,
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
            shared_state: true,
        }
    }
}

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
    consumers: Mutex<HashMap<Subscription, consumer::PullConsumer>>,
    relay_wake: Notify,
    /// The work stream allows message schedules (nats-server >= 2.12):
    /// delays are kept by the server (see `schedule`).
    schedules: bool,
    /// The connected server's version, for errors.
    server_version: String,
    /// The shared flow slots and buckets, opened on first use (`flow`).
    flow: tokio::sync::OnceCell<flow::SharedFlow>,
    /// Times this host turned each waiting job back (`flow`).
    flow_turns: Mutex<HashMap<String, u32>>,
    /// The bucket of uniqueness keys, opened on first use (`unique.rs`).
    unique: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// Each subscription's priority levels (`priority`).
    levels: Mutex<HashMap<Subscription, Arc<priority::Levels>>>,
}

/// The servers of a `[nats] url`: one URL, or several (a cluster) comma
/// separated, which the client takes as a list and fails over between.
/// Each is `nats://`, `tls://`, `ws://` or `wss://` (`host:port` alone
/// means `nats://`). The config checks it when it is read, so a typo ends
/// a start at once instead of being tried again forever.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(|s| {
            let s = s.trim();
            if s.is_empty() {
                return Err("an empty server in the list".to_owned());
            }
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{s:?}: {e} (use nats://host:port, tls://, ws:// or wss://, several comma separated)"))
        })
        .collect()
}

/// 9999-12-31T23:59:59.999Z: the longest schedule time there is, for size
/// checks.
const LATEST_SCHEDULE_MS: i64 = 253_402_300_799_999;

impl JetStream {
    /// Connects, and creates or verifies the streams.
    pub async fn connect(
        settings: JetStreamSettings,
        store: Store,
    ) -> Result<JetStream, JetStreamError> {
        let url = settings.url.clone();
        let servers = server_addrs(&url).map_err(|reason| JetStreamError::BadUrl {
            url: url.clone(),
            reason,
        })?;
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
            .connect(servers)
            .await
            .map_err(|e| {
                use async_nats::ConnectErrorKind as Kind;
                let (url, reason) = (url.clone(), e.to_string());
                match e.kind() {
                    Kind::Authentication | Kind::AuthorizationViolation | Kind::Tls => {
                        JetStreamError::Refused { url, reason }
                    }
                    _ => JetStreamError::Connect { url, reason },
                }
            })?;
        let js = jetstream::new(client.clone());
        let server_version = client.server_info().version;
        let kept = streams::ensure_streams(&js, &settings, &server_version).await?;
        let schedules = kept.schedules;
        let mut settings = settings;
        if kept.max_age != settings.max_age {
            // What keeps a message is the stream's own max_age: commit
            // markers (kept twice that, `state.rs::marker_ttl`), tombstones
            // and the schedule horizon must follow it, not the config. A
            // marker gone while its message is still in the stream would
            // let a delivery of it (a consumer created again from the
            // start) run the job and apply its state a second time.
            tracing::warn!(
                stream = STREAM,
                stream_max_age = %humantime::format_duration(kept.max_age),
                max_age = %humantime::format_duration(settings.max_age),
                "the work stream keeps messages for its own max_age, not [nats] max_age (a host never changes it on an existing stream); going by the stream's: set [nats] max_age to it, or change the stream on the server and restart every host"
            );
            settings.max_age = kept.max_age;
        }
        if !schedules {
            tracing::warn!(
                server = %server_version,
                "this nats-server cannot schedule messages (2.12 or later can): delayed posts and retries are held in the local outbox until due, and `sluice post --delay` is refused"
            );
        }
        if settings.shared_state {
            state::ensure_state_stream(&js, &settings, &server_version).await?;
        }
        Ok(JetStream {
            inner: Arc::new(Inner {
                client,
                js,
                store,
                settings,
                consumers: Mutex::new(HashMap::new()),
                relay_wake: Notify::new(),
                schedules,
                server_version,
                flow: tokio::sync::OnceCell::new(),
                flow_turns: Mutex::default(),
                unique: tokio::sync::OnceCell::new(),
                levels: Mutex::default(),
            }),
        })
    }

    /// The shared state store, with `shared_state` set.
    pub fn shared_state(&self) -> Option<Arc<dyn crate::state::Remote>> {
        if !self.inner.settings.shared_state {
            return None;
        }
        let remote: Arc<dyn crate::state::Remote> =
            SharedState::new(self.inner.client.clone(), self.inner.settings.max_age);
        Some(remote)
    }

    /// How long the work stream keeps messages: its own `max_age` as the
    /// server has it (see [`JetStream::connect`]).
    pub fn max_age(&self) -> Duration {
        self.inner.settings.max_age
    }

    /// The NATS client (for tests and diagnostics).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    fn consumer(&self, sub: &Subscription) -> Option<consumer::PullConsumer> {
        self.inner
            .consumers
            .lock()
            .ok()
            .and_then(|m| m.get(sub).cloned())
    }
}

impl Transport for JetStream {
    async fn register(&self, subscriptions: &[Subscription]) -> Result<(), TransportError> {
        self.register_consumers(subscriptions).await?;
        // Which handlers this host runs for which channel, for the jobs of
        // delayed posts it records before their delivery.
        self.inner
            .store
            .record_consumers(super::pairs(subscriptions))
            .await?;
        Ok(())
    }

    async fn retire(
        &self,
        handlers: &[String],
        serving: &[Subscription],
    ) -> Result<(), TransportError> {
        // The durable consumers stay (see the trait); this host's record
        // of what it runs follows the loaded set.
        super::retire_in_store(&self.inner.store, handlers, serving).await
    }

    async fn publish(&self, messages: Vec<NewMessage>) -> Result<Vec<Published>, TransportError> {
        Ok(self.publish_messages(messages).await?)
    }

    async fn fetch(
        &self,
        subscription: &Subscription,
        max: usize,
    ) -> Result<Vec<Delivery>, TransportError> {
        self.fetch_deliveries(subscription, max).await
    }

    async fn fetch_gated(
        &self,
        subscription: &Subscription,
        max: usize,
        gate: &Arc<crate::flow::Gate>,
    ) -> Result<Vec<Delivery>, TransportError> {
        self.fetch_gated_deliveries(subscription, max, gate).await
    }

    async fn wait(&self, _subscription: &Subscription, _timeout: Duration) {
        // `fetch` already waited `fetch_wait` for messages.
    }

    async fn settle(&self, delivery: &Delivery, settle: Settle) -> Result<(), TransportError> {
        Ok(self.settle_delivery(delivery, settle).await?)
    }

    async fn start(&self, delivery: &Delivery) -> super::Start {
        let m = &delivery.job.message;
        let Some(unique) = crate::message::options::unique(&m.headers) else {
            return super::Start::Run;
        };
        match self.start_unique(&m.channel, &m.id, &unique).await {
            Ok(unique::UniqueStart::Run) => super::Start::Run,
            Ok(unique::UniqueStart::Replaced { by }) => super::Start::Replaced { by },
            Err(e) => super::Start::Fault(e.to_string()),
        }
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

    fn check_message(&self, message: &NewMessage, to: Option<&str>) -> Result<(), String> {
        let m = &message.message;
        let subject = wire::target(&m.channel, to, &m.headers);
        // The dedupe id is at most the message id plus a short suffix (a
        // retry's is the longest).
        let most = u32::MAX;
        let dedupe = format!("{}/{}/retry/{most}/{most}/{most}", m.id, to.unwrap_or(""));
        wire::check_subject(&subject)
            .and_then(|()| {
                wire::headers(&wire::Envelope {
                    message: m,
                    dedupe_id: &dedupe,
                    not_before: Some(i64::MAX),
                    expires_at: message.expires_at,
                })
            })
            .and_then(|mut h| {
                // A delayed one may travel as a schedule, whose headers
                // count against max_payload too.
                if self.inner.schedules {
                    schedule::add_headers(&mut h, LATEST_SCHEDULE_MS, &subject)?;
                }
                wire::check_size(&h, m.body.len(), self.inner.client.max_payload())
            })
            .map_err(|e| e.to_string())
    }
}
