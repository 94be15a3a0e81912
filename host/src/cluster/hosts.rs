//! Which hosts share this JetStream, so that state split between them is
//! never silent.
//!
//! Without `[nats] shared_state` a host keeps its plugins' state in its own
//! SQLite. With two such hosts on one JetStream a counter is split: each
//! counts the share of jobs it ran, and nothing in either host's data
//! shows it. So every host says it is there: every [`BEAT`] it writes a key
//! of its own (a random id per process) to the KV bucket `SLUICE_HOSTS`,
//! with whether it shares state, and reads the others' (entries expire
//! after three beats, so a host that is gone drops out). A host that sees
//! another one while not every host shares state, and has a loaded
//! handler with state in its SQLite, logs a warning per such plugin (once,
//! and again if the split ends and comes back), and `/v1/plugins` says so
//! (`state.split`). A host that shares state and sees one that does not
//! warns too: the jobs that host runs keep their state apart from the
//! shared store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::store::Store;
use crate::transport::JetStream;

/// The bucket.
pub const HOSTS: &str = "SLUICE_HOSTS";
/// How often a host writes its entry and reads the others'.
pub const BEAT: Duration = Duration::from_secs(5);

/// What a host's entry says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    shared_state: bool,
}

/// What this host knows of the others, for `/v1/plugins`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateSplit {
    /// Hosts on this JetStream lately, this one included.
    pub hosts: usize,
    /// Of them, those that keep state in their own SQLite.
    pub not_shared: usize,
    /// Loaded handlers whose state is split: with state in this host's
    /// SQLite (or, on a host that shares state, every handler, as soon as
    /// a host that does not is seen).
    pub plugins: Vec<String>,
}

/// This host's entry in the bucket, and what it saw.
#[derive(Clone)]
pub struct Hosts {
    kv: async_nats::jetstream::kv::Store,
    me: String,
    shared: bool,
    seen: Arc<Mutex<StateSplit>>,
}

impl Hosts {
    pub(super) async fn open(
        js: &JetStream,
        replicas: usize,
        shared: bool,
    ) -> Result<Hosts, String> {
        let kv = super::bucket(
            js,
            HOSTS,
            "sluice hosts on this JetStream, by a random id per process",
            replicas,
            BEAT * 3,
        )
        .await?;
        Ok(Hosts {
            kv,
            me: crate::message::new_id(),
            shared,
            seen: Arc::new(Mutex::new(StateSplit {
                hosts: 1,
                not_shared: usize::from(!shared),
                plugins: Vec::new(),
            })),
        })
    }

    /// Whether this host shares state (`[nats] shared_state`).
    pub fn shares_state(&self) -> bool {
        self.shared
    }

    /// What the last look found.
    pub fn split(&self) -> StateSplit {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Writes this host's entry and looks at the others' every beat until
    /// `stop`; a failed beat is logged and the next one tries again.
    pub async fn run(self, store: Store, registry: Arc<Registry>, stop: CancellationToken) {
        let mut warned: Vec<String> = Vec::new();
        loop {
            match self.beat(&store, &registry).await {
                Ok(now) => {
                    if let Ok(mut seen) = self.seen.lock() {
                        seen.clone_from(&now);
                    }
                    self.warn(&now, &mut warned);
                }
                Err(e) => tracing::debug!(error = %e, "cannot share this host's presence"),
            }
            tokio::select! {
                () = tokio::time::sleep(BEAT) => {}
                () = stop.cancelled() => break,
            }
        }
        // Leave at once rather than after three beats (bounded: the
        // server may be gone).
        let _ = tokio::time::timeout(Duration::from_secs(2), self.kv.delete(&self.me)).await;
    }

    async fn beat(&self, store: &Store, registry: &Registry) -> Result<StateSplit, String> {
        let entry = serde_json::to_vec(&Entry {
            shared_state: self.shared,
        })
        .map_err(|e| e.to_string())?;
        self.kv
            .put(&self.me, Bytes::from(entry))
            .await
            .map_err(|e| format!("writing {HOSTS}: {e}"))?;
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| format!("listing {HOSTS}: {e}"))?
            .try_collect()
            .await
            .map_err(|e| format!("listing {HOSTS}: {e}"))?;
        let mut split = StateSplit {
            hosts: 1,
            not_shared: usize::from(!self.shared),
            plugins: Vec::new(),
        };
        for key in keys.iter().filter(|k| **k != self.me) {
            let Ok(Some(value)) = self.kv.get(key).await else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<Entry>(&value) else {
                continue;
            };
            split.hosts += 1;
            split.not_shared += usize::from(!entry.shared_state);
        }
        if split.hosts > 1 && split.not_shared > 0 {
            let handlers: Vec<String> = registry.current().handlers.keys().cloned().collect();
            for plugin in handlers {
                let split_here = self.shared
                    || store
                        .has_state(&plugin)
                        .await
                        .map_err(|e| format!("reading {plugin}'s state: {e}"))?;
                if split_here {
                    split.plugins.push(plugin);
                }
            }
        }
        Ok(split)
    }

    /// Logs each plugin newly split (`warned`: those logged already and
    /// still split).
    fn warn(&self, now: &StateSplit, warned: &mut Vec<String>) {
        warned.retain(|p| now.plugins.contains(p));
        for plugin in &now.plugins {
            if warned.contains(plugin) {
                continue;
            }
            if self.shared {
                tracing::warn!(
                    plugin = %plugin, hosts = now.hosts, not_shared = now.not_shared,
                    "STATE IS SPLIT: this host shares plugin state, but {} of the {} hosts on this JetStream keep it in their own SQLite ([nats] shared_state off): the jobs they run read and write state apart from the shared store; set shared_state = true on every host",
                    now.not_shared, now.hosts
                );
            } else {
                tracing::warn!(
                    plugin = %plugin, hosts = now.hosts, not_shared = now.not_shared,
                    "STATE IS SPLIT: {} hosts run this JetStream's jobs and this one keeps plugin {plugin}'s state in its own SQLite ([nats] shared_state off): each host sees only the state of the jobs it ran (a counter counts its own share); set shared_state = true on every host",
                    now.hosts
                );
            }
            warned.push(plugin.clone());
        }
    }
}
