//! Job outcomes over time, per channel: what the dashboard plots.
//!
//! Why in memory and not in SQLite: a row per outcome (or an upsert per
//! finish into a stats table) would be one more write on every job's
//! transaction, for numbers only a person looking at a plot needs. The
//! pump already counts outcomes in memory; this keeps the same counts in
//! 10-second buckets for the last hour. So the plots show what *this*
//! daemon did since it started; job records, counts of waiting and dead
//! jobs, and everything a decision rests on come from the store.
//!
//! Recording is one std `Mutex` held for a map lookup and an add, never
//! across `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Width of one bucket, in ms.
pub const BUCKET_MS: i64 = 10_000;

/// Buckets kept per channel: one hour.
pub const BUCKETS: usize = 360;

/// Outcomes in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Unix ms of the bucket's start.
    pub start_ms: i64,
    /// Calls that committed work: succeeded, or a slice continued.
    pub done: u64,
    /// Failures that will be retried.
    pub failed: u64,
    /// Dead-lettered (poison, permanent, out of attempts).
    pub dead: u64,
    /// Anything else (expired, cancelled, handed back, state conflicts).
    pub other: u64,
}

/// Outcomes per channel over the last [`BUCKETS`] buckets.
#[derive(Debug, Default)]
pub struct Series {
    channels: Mutex<BTreeMap<String, VecDeque<Bucket>>>,
}

impl Series {
    /// Counts one outcome (the pump's word for it) on `channel` at `now_ms`.
    pub fn record(&self, channel: &str, outcome: &str, now_ms: i64) {
        let start_ms = now_ms - now_ms.rem_euclid(BUCKET_MS);
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = match channels.get_mut(channel) {
            Some(ring) => ring,
            None => channels.entry(channel.to_owned()).or_default(),
        };
        if ring.back().is_none_or(|b| b.start_ms < start_ms) {
            ring.push_back(Bucket {
                start_ms,
                ..Bucket::default()
            });
            while ring.len() > BUCKETS {
                ring.pop_front();
            }
        }
        // A clock step back lands in the newest bucket rather than nowhere.
        let Some(bucket) = ring.back_mut() else {
            return;
        };
        match outcome {
            "succeeded" | "continued" => bucket.done += 1,
            "retrying" => bucket.failed += 1,
            "dead" | "poison" => bucket.dead += 1,
            _ => bucket.other += 1,
        }
    }

    /// The last `count` buckets up to `now_ms` of every channel, oldest
    /// first, empty buckets filled in (so every channel's points line up).
    pub fn snapshot(&self, now_ms: i64, count: usize) -> BTreeMap<String, Vec<Bucket>> {
        let count = count.clamp(1, BUCKETS);
        let newest = now_ms - now_ms.rem_euclid(BUCKET_MS);
        let oldest = newest - BUCKET_MS * (count as i64 - 1);
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .iter()
            .map(|(channel, ring)| {
                let mut points: Vec<Bucket> = (0..count as i64)
                    .map(|i| Bucket {
                        start_ms: oldest + i * BUCKET_MS,
                        ..Bucket::default()
                    })
                    .collect();
                for b in ring.iter().filter(|b| b.start_ms >= oldest) {
                    let i = ((b.start_ms - oldest) / BUCKET_MS) as usize;
                    if let Some(p) = points.get_mut(i) {
                        *p = *b;
                    }
                }
                (channel.clone(), points)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_land_in_their_bucket_and_old_ones_fall_off() {
        let s = Series::default();
        let t0 = 1_000_000 * BUCKET_MS;
        s.record("a", "succeeded", t0 + 1);
        s.record("a", "continued", t0 + 2);
        s.record("a", "retrying", t0 + BUCKET_MS);
        s.record("a", "poison", t0 + BUCKET_MS + 5);
        s.record("a", "released", t0 + BUCKET_MS + 6);
        s.record("b.c", "dead", t0 + 3 * BUCKET_MS);
        let snap = s.snapshot(t0 + 3 * BUCKET_MS + 1, 4);
        let a = &snap["a"];
        assert_eq!(a.len(), 4);
        assert_eq!((a[0].start_ms, a[0].done), (t0, 2));
        assert_eq!((a[1].failed, a[1].dead, a[1].other), (1, 1, 1));
        assert_eq!(
            a[2],
            Bucket {
                start_ms: t0 + 2 * BUCKET_MS,
                ..Bucket::default()
            }
        );
        assert_eq!(snap["b.c"][3].dead, 1);
        // An hour later the ring holds no more than an hour.
        for i in 0..(BUCKETS as i64 + 10) {
            s.record("a", "succeeded", t0 + i * BUCKET_MS);
        }
        let ring_len = s.channels.lock().map(|c| c["a"].len()).unwrap_or(0);
        assert_eq!(ring_len, BUCKETS);
    }
}
