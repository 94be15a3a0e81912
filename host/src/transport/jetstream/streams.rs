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

pub(super) async fn ensure_stream(
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

impl JetStream {
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
}
