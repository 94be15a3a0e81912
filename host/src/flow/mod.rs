//! Flow control: what a handler's pump may start now, beyond its own
//! `concurrency` on this host.
//!
//! Per handler (`[plugin.NAME]` in the config) an operator may declare
//! - a **concurrency key** (`concurrency_key`: `header:NAME`, or a JSON
//!   pointer into the body) with `per_key_concurrency` (default 1): at
//!   most that many jobs of one key run at once (on JetStream, across
//!   every host; see `transport::jetstream::flow`), and keys are served
//!   round robin, so one key's flood delays another key's job by at most
//!   a round of the keys that have work;
//! - a **rate limit** (`rate = "N/INTERVAL"`, `rate_burst`, optional
//!   `rate_key`): a token bucket per handler, or per key (`rate`).
//!
//! Jobs over a limit stay queued: they are neither claimed nor failed, and
//! cost no attempt. Their status says why (`waiting: concurrency KEY`,
//! `waiting: rate limit`; [`Waiting`]), and `/metrics` counts them.
//!
//! This module decides; it knows neither SQL nor NATS. The embedded store
//! shows a [`Gate`] the due jobs page by page and claims what it picks
//! (`store::flow`); the JetStream transport asks the shared slots and
//! buckets (`transport::jetstream::flow`) and keeps a gate per handler for
//! this host's leases and the status it shows.

mod gate;
mod key;
pub mod priority;
pub mod rate;

pub use gate::{
    Gate, Lease, MAX_BUFFERED, Pick, Position, RESCAN, Row, SCAN_PAGE, SCAN_PAGES, Scan, Shared,
    Waiting, per_key_cap,
};
pub use key::{KeySource, MAX_KEY};
pub use rate::{Bucket, Rate};

use crate::message::Headers;

/// How every waiting reason starts (`Waiting`'s display).
pub const WAITING_PREFIX: &str = "waiting: ";

/// At most `limit` jobs of one key at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Concurrency {
    /// Where the key comes from.
    pub key: KeySource,
    /// Jobs per key at once (>= 1).
    pub limit: u32,
}

/// A token bucket per handler (`key: None`) or per key.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Per key, when set.
    pub key: Option<KeySource>,
    /// The rate and burst.
    pub rate: Rate,
}

/// One handler's flow rules (none: no gate at all).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlowSpec {
    /// Per-key concurrency.
    pub concurrency: Option<Concurrency>,
    /// A rate limit.
    pub rate: Option<RateLimit>,
}

impl FlowSpec {
    /// True when it limits anything.
    pub fn is_set(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some()
    }

    /// The key jobs are served round robin by: the concurrency key, else
    /// the rate key, else one key for all.
    pub fn fair_key(&self, headers: &Headers, body: &[u8]) -> String {
        match (&self.concurrency, &self.rate) {
            (Some(c), _) => c.key.key_of(headers, body),
            (None, Some(RateLimit { key: Some(k), .. })) => k.key_of(headers, body),
            _ => String::new(),
        }
    }

    /// The bucket a job takes its token from (`""`: the handler's).
    pub fn rate_key(&self, headers: &Headers, body: &[u8]) -> String {
        match &self.rate {
            Some(RateLimit { key: Some(k), .. }) => k.key_of(headers, body),
            _ => String::new(),
        }
    }
}

/// A transport's part of a [`Hold`] (JetStream: a shared slot).
pub trait SharedPart: Send + Sync {
    /// Gives the part back, then drops `lease` (which wakes the pump), so
    /// a pump the lease wakes finds the part given back already. Called
    /// from a `Drop`, so it must not block: a part that needs a round trip
    /// does it in a task and drops the lease there.
    fn release(self: Box<Self>, lease: Lease);
}

/// What a started job holds under its handler's rules until its delivery
/// is dropped (after its outcome is recorded): its lease on this host's
/// gate and, on JetStream, its shared slot.
pub struct Hold {
    /// This host's count of the key's running jobs (`None` once dropped).
    lease: Option<Lease>,
    /// The transport's part, if any: given back before the lease.
    shared: Option<Box<dyn SharedPart>>,
}

impl Hold {
    /// A hold of `lease` and the transport's `shared` part.
    pub fn new(lease: Lease, shared: Option<Box<dyn SharedPart>>) -> Hold {
        Hold {
            lease: Some(lease),
            shared,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        match self.shared.take() {
            Some(shared) => shared.release(lease),
            None => drop(lease),
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").field("lease", &self.lease).finish()
    }
}
