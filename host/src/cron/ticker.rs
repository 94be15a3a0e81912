//! The loop that fires ticks: one task per daemon, every host runs it.
//!
//! Each step of a cron reads its record and compares it with the clock:
//! - no record, or one computed for another expression or zone: write a
//!   fresh one that says "handled up to now" (no catch-up for ticks from
//!   before the cron existed or was changed);
//! - the latest instant at or before now is past the record's `handled`:
//!   that tick is due. It is fired, unless it is later than `deadline`
//!   and the policy is `skip`. Earlier due instants (a run of ticks missed
//!   while down) are never fired: at most one tick per step, so a host
//!   back after a week fires a minutely cron once, not 10,080 times. The
//!   record moves to the tick either way, by compare-and-set, together
//!   with the tick's message (see [`super::Ledger::write`]).
//!
//! Then the loop sleeps until the earliest next instant of any cron (at
//! most [`MAX_SLEEP`], so a clock that jumps is noticed). A step that
//! fails (store or NATS unreachable) is logged and tried again after
//! [`RETRY`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CronEntry, CronError, Ledger, Missed, Posted, Record, utc};
use crate::message::now_ms;
use crate::pump::Control;

/// Longest sleep between two looks at the clock.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Most missed ticks counted per step (the count is for logs and metrics;
/// 10000 then means at least that many).
pub const MISSED_COUNTED: u64 = 10_000;

/// Pause after a failed step.
pub const RETRY: Duration = Duration::from_secs(1);

/// Ticks this process fired and skipped, per cron (`/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    by_cron: Mutex<BTreeMap<String, (u64, u64, u64)>>,
}

impl Counters {
    fn add(&self, name: &str, fired: u64, duplicate: u64, skipped: u64) {
        let mut map = self
            .by_cron
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = map.entry(name.to_owned()).or_default();
        e.0 += fired;
        e.1 += duplicate;
        e.2 += skipped;
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let map = self
            .by_cron
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        out.push_str(
            "# HELP sluice_cron_ticks_total Cron ticks this process handled: fired (posted), duplicate (another host had posted it) or skipped (missed).\n\
             # TYPE sluice_cron_ticks_total counter\n",
        );
        for (name, (fired, duplicate, skipped)) in &map {
            let name = crate::metrics::escape(name);
            for (outcome, n) in [
                ("fired", fired),
                ("duplicate", duplicate),
                ("skipped", skipped),
            ] {
                let _ = writeln!(
                    out,
                    "sluice_cron_ticks_total{{cron=\"{name}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
    }
}

/// Fires `entries`' ticks through `ledger` until `stop`.
pub async fn run<L: Ledger>(
    entries: Arc<Vec<CronEntry>>,
    ledger: L,
    control: Arc<Control>,
    stop: CancellationToken,
) {
    let counters = &control.metrics.cron;
    if entries.is_empty() {
        return stop.cancelled().await;
    }
    loop {
        let now = now_ms();
        let mut wake = now.saturating_add(millis(MAX_SLEEP));
        for entry in entries.iter() {
            match step(&ledger, entry, counters, now).await {
                Ok(Some(next)) => wake = wake.min(next),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(cron = %entry.name, error = %e, "cannot fire cron ticks yet; trying again");
                    wake = wake.min(now.saturating_add(millis(RETRY)));
                }
            }
        }
        // A few ms past the instant, so the clock read next says it is due.
        let pause = u64::try_from(wake.saturating_sub(now_ms()).saturating_add(5)).unwrap_or(0);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(pause)) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One look at one cron (see the module docs); the next instant to look
/// again at, if it has any.
async fn step<L: Ledger>(
    ledger: &L,
    entry: &CronEntry,
    counters: &Counters,
    now: i64,
) -> Result<Option<i64>, CronError> {
    let spec = entry.schedule.fingerprint();
    let key = entry.record_key();
    let current = ledger.read(&key).await?;
    let (record, revision) = match current {
        // A tick whose record moved but whose message may not be stored
        // (a host died in between): stored once, then looked at again.
        Some(v) if v.record.spec == spec && v.record.pending.is_some() => {
            let tick = v.record.pending.as_ref().map_or(0, |p| p.tick);
            let written = ledger.settle_pending(&key, v, entry.message(tick)).await?;
            if written.posted == Posted::New {
                counters.add(&entry.name, 1, 0, 0);
                tracing::info!(cron = %entry.name, tick = %utc(tick), late_ms = now - tick, channel = %entry.channel, "cron tick fired (left pending by a host that stopped)");
            }
            return Ok(Some(now));
        }
        Some(v) if v.record.spec == spec => (v.record, v.revision),
        other => {
            let (previous, expected) =
                other.map_or((None, None), |v| (Some(v.record), Some(v.revision)));
            let fresh = Record {
                spec: spec.clone(),
                handled: now,
                fired: previous.as_ref().and_then(|r| r.fired),
                fired_at: previous.as_ref().and_then(|r| r.fired_at),
                fired_count: previous.as_ref().map_or(0, |r| r.fired_count),
                skipped_count: previous.as_ref().map_or(0, |r| r.skipped_count),
                pending: None,
            };
            if ledger.write(&key, fresh, expected, None).await?.won {
                tracing::info!(cron = %entry.name, schedule = %spec, next = %entry.schedule.next_after(now).map_or_else(|| "never".into(), utc), "cron scheduled");
            }
            return Ok(entry.schedule.next_after(now));
        }
    };
    let Some(tick) = entry
        .schedule
        .latest_until(now)
        .filter(|t| *t > record.handled)
    else {
        return Ok(entry.schedule.next_after(now.max(record.handled)));
    };
    let earlier = entry
        .schedule
        // At most MISSED_COUNTED: a per-second cron 12 days down would
        // be a million croner steps on a tokio worker, on every retry.
        .count_between(record.handled, tick, MISSED_COUNTED);
    let late = now.saturating_sub(tick) > millis(entry.deadline);
    let fire = !(late && entry.missed == Missed::Skip);
    let skipped = earlier + u64::from(!fire);
    let mut next = Record {
        handled: tick,
        skipped_count: record.skipped_count + skipped,
        pending: None,
        ..record
    };
    if fire {
        next.fired = Some(tick);
        next.fired_at = Some(now);
        next.fired_count += 1;
    }
    let message = fire.then(|| entry.message(tick));
    let written = ledger.write(&key, next, Some(revision), message).await?;
    // Counted by what the post did (the stream's answer on JetStream), so
    // the hosts' `fired` counts add up to the ticks fired.
    match written.posted {
        Posted::New => {
            counters.add(&entry.name, 1, 0, 0);
            tracing::info!(cron = %entry.name, tick = %utc(tick), late_ms = now - tick, missed_before = earlier, channel = %entry.channel, "cron tick fired");
        }
        Posted::Duplicate => counters.add(&entry.name, 0, 1, 0),
        Posted::Nothing => {}
    }
    if written.won && skipped > 0 {
        counters.add(&entry.name, 0, 0, skipped);
        if !fire {
            tracing::warn!(cron = %entry.name, tick = %utc(tick), late_ms = now - tick, missed_before = earlier, "cron tick missed: skipped (missed = \"skip\")");
        } else {
            tracing::warn!(cron = %entry.name, missed = earlier, "cron ticks missed while no host could fire them; fired the latest once (missed = \"once\")");
        }
    }
    Ok(entry.schedule.next_after(now))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cron::{Versioned, Written};
    use crate::store::NewMessage;

    /// Records in memory; the ticks posted, by message id.
    #[derive(Default)]
    struct Memory {
        records: Mutex<HashMap<String, (Record, u64)>>,
        posted: Mutex<Vec<String>>,
    }

    impl Ledger for Memory {
        async fn read(&self, name: &str) -> Result<Option<Versioned>, CronError> {
            let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            Ok(records.get(name).map(|(record, revision)| Versioned {
                record: record.clone(),
                revision: *revision,
            }))
        }

        async fn write(
            &self,
            name: &str,
            record: Record,
            expected: Option<u64>,
            tick: Option<NewMessage>,
        ) -> Result<Written, CronError> {
            let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let current = records.get(name).map(|(_, r)| *r);
            if current != expected {
                return Ok(Written {
                    won: false,
                    posted: Posted::Nothing,
                });
            }
            records.insert(name.to_owned(), (record, current.unwrap_or(0) + 1));
            let posted = match tick {
                Some(t) => {
                    let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
                    let duplicate = posted.contains(&t.message.id);
                    if !duplicate {
                        posted.push(t.message.id);
                    }
                    Posted::from_duplicate(duplicate)
                }
                None => Posted::Nothing,
            };
            Ok(Written { won: true, posted })
        }
    }

    fn entry(schedule: &str) -> CronEntry {
        CronEntry {
            name: "report".into(),
            schedule: crate::cron::Schedule::parse(schedule, "UTC")
                .unwrap_or_else(|e| panic!("{e}")),
            channel: "c".into(),
            kind: crate::message::MessageKind::Command,
            body: Vec::new(),
            headers: Vec::new(),
            missed: Missed::Once,
            deadline: Duration::from_secs(60),
        }
    }

    /// Two hosts with different schedules under one name (a rolling
    /// deploy): each fires its own ticks instead of resetting the other's
    /// record on every step, and an instant both name is posted once.
    #[test]
    fn two_schedules_under_one_name_both_fire() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (every_second, every_two) = (entry("* * * * * *"), entry("*/2 * * * * *"));
        let ledger = Memory::default();
        let counters = Counters::default();
        let start = 1_800_000_000_000; // a whole, even second
        rt.block_on(async {
            for s in 0..10 {
                let now = start + s * 1000 + 10;
                for e in [&every_second, &every_two] {
                    step(&ledger, e, &counters, now)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
        });
        let posted = ledger
            .posted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Each fires from its first step on: 9 seconds, of which the even
        // ones are shared (one message each).
        assert_eq!(posted.len(), 9, "{posted:?}");
        let distinct: std::collections::BTreeSet<&String> = posted.iter().collect();
        assert_eq!(distinct.len(), posted.len());
    }
}
