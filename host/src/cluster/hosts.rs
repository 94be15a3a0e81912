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
//!
//! The same beat measures this host's clock against the server's: the
//! server stamps each entry it stores (`created`), and a stamp far from
//! this host's clock at the write (more than [`CLOCK_BOUND`] beyond the
//! round trip) is logged as a warning, once, and again if the offset moves
//! by more than the bound; `/metrics` shows the last offset
//! (`sluice_clock_offset_seconds`). Leases on JetStream (flow slots, cron
//! records, these presence entries) are times written by one host's clock
//! and judged by another's, so hosts must keep their clocks in step (NTP).

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

/// How far this host's clock may be from the server's before it warns.
/// NTP keeps clocks within milliseconds, so 2 s is far past any honest
/// drift; and it is well below what leases are measured in (a 5 s beat,
/// presence for three beats, flow slot and cron leases of seconds to
/// minutes), so a host warns before its clock can make another host take
/// its lease early, or keep one of its own past its end.
pub const CLOCK_BOUND: Duration = Duration::from_secs(2);

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
    /// The last measured offset of the server's clock from this host's
    /// (seconds, positive: the server is ahead), if measured.
    offset: Arc<Mutex<Option<f64>>>,
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
            offset: Arc::new(Mutex::new(None)),
        })
    }

    /// The server's clock minus this host's, in seconds, as the last beat
    /// measured it (`None` before the first).
    pub fn clock_offset(&self) -> Option<f64> {
        self.offset.lock().ok().and_then(|o| *o)
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
        let mut clock = ClockWarning::default();
        loop {
            match self.measure().await {
                Ok(offset) => {
                    if let Ok(mut o) = self.offset.lock() {
                        *o = Some(offset.seconds);
                    }
                    clock.check(offset);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot measure this host's clock against the server's")
                }
            }
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

    /// Writes this host's entry and measures the server's stamp of it
    /// against this host's clock at the write.
    async fn measure(&self) -> Result<Offset, String> {
        let entry = serde_json::to_vec(&Entry {
            shared_state: self.shared,
        })
        .map_err(|e| e.to_string())?;
        let before = crate::message::now_ms();
        let revision = self
            .kv
            .put(&self.me, Bytes::from(entry))
            .await
            .map_err(|e| format!("writing {HOSTS}: {e}"))?;
        let after = crate::message::now_ms();
        let stored = self
            .kv
            .entry_for_revision(&self.me, revision)
            .await
            .map_err(|e| format!("reading {HOSTS}: {e}"))?
            .ok_or_else(|| format!("{HOSTS}: this host's entry vanished"))?;
        let server_ms = i64::try_from(stored.created.unix_timestamp_nanos() / 1_000_000)
            .map_err(|e| e.to_string())?;
        Ok(Offset::of(server_ms, before, after))
    }

    async fn beat(&self, store: &Store, registry: &Registry) -> Result<StateSplit, String> {
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

/// One measurement of the server's clock against this host's.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Offset {
    /// Server minus host, seconds (positive: the server is ahead).
    seconds: f64,
    /// Half the write's round trip, seconds: the stamp was made somewhere
    /// in it, so the offset is known to within this.
    within: f64,
}

impl Offset {
    /// The offset of a server stamp `server_ms` made during a write that
    /// this host sent at `before` and saw answered at `after` (its ms).
    fn of(server_ms: i64, before: i64, after: i64) -> Offset {
        let mid = before + (after - before) / 2;
        Offset {
            seconds: (server_ms - mid) as f64 / 1000.0,
            within: (after - before).max(0) as f64 / 2000.0,
        }
    }

    /// Whether the clocks surely differ by more than [`CLOCK_BOUND`].
    fn far(&self) -> bool {
        self.seconds.abs() - self.within > CLOCK_BOUND.as_secs_f64()
    }
}

/// When to warn of a far clock: on the first far measurement, and again
/// when it moved by more than the bound since the last warning.
#[derive(Debug, Default)]
struct ClockWarning {
    /// The offset last warned of, while the clock is still far.
    warned: Option<f64>,
}

impl ClockWarning {
    /// Logs `offset` if it calls for a warning; true if it did.
    fn check(&mut self, offset: Offset) -> bool {
        if !offset.far() {
            if self.warned.take().is_some() {
                tracing::info!(
                    offset_seconds = offset.seconds,
                    "this host's clock is back in step with the NATS server's"
                );
            }
            return false;
        }
        let moved = self
            .warned
            .is_none_or(|w| (w - offset.seconds).abs() > CLOCK_BOUND.as_secs_f64());
        if moved {
            tracing::warn!(
                offset_seconds = offset.seconds,
                bound_seconds = CLOCK_BOUND.as_secs_f64(),
                "CLOCK OFF: the NATS server's clock is {:+.1} s from this host's (more than {} s): \
                 leases on JetStream (flow slots, cron, host presence) are judged by host clocks, so \
                 this host may take another's lease early or hold its own too long; keep every host \
                 in step with NTP",
                offset.seconds,
                CLOCK_BOUND.as_secs()
            );
            self.warned = Some(offset.seconds);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_counts_only_beyond_the_round_trip() {
        let near = Offset::of(10_500, 10_000, 10_000);
        assert!((near.seconds - 0.5).abs() < 1e-9 && !near.far());
        let ahead = Offset::of(40_000, 10_000, 10_000);
        assert!((ahead.seconds - 30.0).abs() < 1e-9 && ahead.far());
        let behind = Offset::of(0, 3_000, 3_000);
        assert!(behind.far() && behind.seconds < 0.0);
        // 2.5 s off, but the write took 2 s: it may be 1.5 s.
        assert!(!Offset::of(13_500, 10_000, 12_000).far());
    }

    #[test]
    fn a_far_clock_is_warned_of_once_and_again_when_it_moves() {
        let at = |s: f64| Offset {
            seconds: s,
            within: 0.0,
        };
        let mut w = ClockWarning::default();
        assert!(!w.check(at(-1.0)));
        assert!(w.check(at(30.0)));
        assert!(!w.check(at(30.5)));
        assert!(!w.check(at(31.9)));
        assert!(w.check(at(33.0)));
        assert!(!w.check(at(0.1)), "back in step");
        assert!(w.check(at(-30.0)), "far again");
    }
}
