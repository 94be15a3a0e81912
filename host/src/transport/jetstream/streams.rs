//! Stream and consumer setup: the streams Sluice needs (created or
//! checked at connect), and one durable pull consumer per (channel,
//! handler), created or brought up to date when a subscription registers.

use async_nats::jetstream::{self, consumer, stream};

use super::super::Subscription;
use super::super::wire;
use super::{JetStream, JetStreamError, JetStreamSettings, STREAM};

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

/// Creates or checks the work stream and the dead-letter stream; returns
/// the work stream's: whether it has message schedules (asked for when the
/// server supports them), and how long it keeps messages (its own
/// `max_age`, which a host never changes on an existing stream).
pub(super) async fn ensure_streams(
    js: &jetstream::Context,
    settings: &JetStreamSettings,
    server_version: &str,
) -> Result<Kept, JetStreamError> {
    let wanted = super::schedule::server_supports(server_version);
    let mut subjects = vec![
        format!("{}.>", wire::PREFIX),
        format!("{}.>", wire::CONT_PREFIX),
        format!("{}.>", wire::PRIO_PREFIX),
        format!("{}.>", wire::PRIO_CONT_PREFIX),
    ];
    if wanted {
        subjects.push(format!("{}.>", super::schedule::SCHED_PREFIX));
    }
    let work = ensure_stream(js, STREAM, subjects, settings, wanted).await?;
    ensure_stream(
        js,
        super::DLQ_STREAM,
        vec![format!("{}.>", wire::DLQ_PREFIX)],
        settings,
        false,
    )
    .await?;
    Ok(work)
}

/// What a stream is, as the server has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kept {
    /// It allows message schedules.
    pub(super) schedules: bool,
    /// Its `max_age` (zero: messages are kept until removed).
    pub(super) max_age: std::time::Duration,
}

/// Creates `name` or checks it, and brings an older stream up to date
/// (a subject it lacks, schedules it does not allow yet: both are stream
/// updates the server applies to a non-empty stream). `schedules` asks for
/// message schedules; returns whether the stream has them and its
/// `max_age` (left as it is on an existing stream: lowering it would drop
/// messages, and either way it is the operator's).
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: Vec<String>,
    settings: &JetStreamSettings,
    schedules: bool,
) -> Result<Kept, JetStreamError> {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: subjects.clone(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        allow_message_schedules: schedules,
        ..Default::default()
    };
    let stream_err = |e: String| JetStreamError::Stream {
        name: name.to_owned(),
        reason: e,
    };
    let s = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    let mut have = s.cached_info().config.clone();
    let missing: Vec<&String> = subjects
        .iter()
        .filter(|w| !have.subjects.contains(w))
        .collect();
    if !missing.is_empty() || (schedules && !have.allow_message_schedules) {
        tracing::info!(
            stream = name,
            ?missing,
            schedules,
            "updating stream settings"
        );
        let mut update = have.clone();
        for m in missing {
            update.subjects.push(m.clone());
        }
        update.allow_message_schedules |= schedules;
        have = js
            .update_stream(update)
            .await
            .map_err(|e| stream_err(format!("cannot update it to {subjects:?}: {e}")))?
            .config;
    }
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
    Ok(Kept {
        schedules: have.allow_message_schedules,
        max_age: have.max_age,
    })
}

impl JetStream {
    /// After a failed pull of `sub`: if its durable consumer (or the work
    /// stream) no longer exists (an operator removed it, a server came
    /// back without its store), creates it again as at start, so the
    /// channel runs on instead of failing every pull until a restart. A
    /// check that itself fails changes nothing (the pump tries again).
    pub(super) async fn recreate_if_removed(&self, sub: &Subscription) {
        let name = consumer_name(sub);
        let stream = match self.inner.js.get_stream(STREAM).await {
            Ok(s) => s,
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                tracing::warn!(
                    stream = STREAM,
                    "the work stream was removed; creating it again"
                );
                let inner = &self.inner;
                if let Err(e) =
                    ensure_streams(&inner.js, &inner.settings, &inner.server_version).await
                {
                    tracing::warn!(error = %e, "cannot create the streams again yet");
                    return;
                }
                match self.inner.js.get_stream(STREAM).await {
                    Ok(s) => s,
                    Err(_) => return,
                }
            }
            Err(_) => return,
        };
        match stream.consumer_info(&name).await {
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {}
            _ => return,
        }
        match self.register_consumers(std::slice::from_ref(sub)).await {
            Ok(()) => {
                tracing::warn!(consumer = %name, channel = %sub.channel, handler = %sub.consumer, "durable consumer was removed; created again")
            }
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "durable consumer was removed and cannot be created again yet")
            }
        }
    }

    /// Creates (or updates) the durable consumer of each subscription.
    pub(super) async fn register_consumers(
        &self,
        subscriptions: &[Subscription],
    ) -> Result<(), JetStreamError> {
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
            let c = ensure_consumer(&stream, sub, 0, self.inner.settings.ack_wait).await?;
            if let Ok(mut map) = self.inner.consumers.lock() {
                map.insert(sub.clone(), c);
            }
            self.watch_levels(sub).await;
        }
        Ok(())
    }
}

/// Creates or brings up to date the durable consumer of `sub` at priority
/// `level`: level 0 reads the channel's plain subjects (the consumer every
/// version of Sluice made), a level above reads that level's subjects
/// (`wire::subject_at`) under the name [`level_consumer_name`].
pub(super) async fn ensure_consumer<I>(
    stream: &jetstream::stream::Stream<I>,
    sub: &Subscription,
    level: u8,
    ack_wait: std::time::Duration,
) -> Result<consumer::PullConsumer, JetStreamError> {
    let name = level_consumer_name(sub, level);
    let err = |e: String| JetStreamError::Consumer {
        name: name.clone(),
        reason: e,
    };
    let description = if level == 0 {
        format!("sluice handler {} on {}", sub.consumer, sub.channel)
    } else {
        format!(
            "sluice handler {} on {}, priority {level}",
            sub.consumer, sub.channel
        )
    };
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(description),
        filter_subjects: vec![
            wire::subject_at(&sub.channel, level),
            wire::continuation_subject_at(&sub.consumer, &sub.channel, level),
        ],
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        // Unlimited: each host takes at most its own free permits
        // (its `concurrency`), so hosts add capacity. A limit of one
        // host's concurrency here was shared by every host: three
        // hosts ran as many jobs at once as one, and each got `409
        // Exceeded MaxAckPending` on its pulls while the others held
        // the slots.
        max_ack_pending: -1,
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
        if info.ack_wait != config.ack_wait {
            // One consumer, one ack wait: a host whose own is longer
            // heartbeats too slowly for the consumer's, and its long
            // jobs go to another host and run twice.
            tracing::warn!(consumer = %name, consumer_ack_wait = ?info.ack_wait, ack_wait = ?config.ack_wait, "the consumer's ack_wait is not this host's [nats] ack_wait; setting it to this host's: give every host the same ack_wait, or hosts with a longer one have their long jobs handed on and run twice");
        }
        tracing::info!(consumer = %name, "updating consumer settings");
        c = stream
            .update_consumer(config)
            .await
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(c)
}

/// The durable consumer name of `sub` at priority `level`: level 0's is
/// [`consumer_name`], a level above adds `__p<level>`.
pub fn level_consumer_name(sub: &Subscription, level: u8) -> String {
    if level == 0 {
        consumer_name(sub)
    } else {
        format!("{}__p{level}", consumer_name(sub))
    }
}
