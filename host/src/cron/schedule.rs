//! A cron schedule in a time zone: which instants it names.
//!
//! Parsing and the calendar arithmetic (day-of-week rules, months of
//! different lengths, daylight-saving gaps and repeats) are `croner`'s;
//! the zones are `chrono-tz`'s, compiled into the binary, so every host
//! running the same build computes the same instants whatever its
//! `/usr/share/zoneinfo` says. Everything here speaks Unix milliseconds,
//! like the rest of the host; occurrences fall on whole seconds.

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule: the expression as written, its zone, and what
/// croner made of it.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    cron: Cron,
}

impl Schedule {
    /// Parses `expression` (5 fields: minute hour day-of-month month
    /// day-of-week; or 6 with seconds first; or a nickname such as
    /// `@hourly`) in the IANA zone `zone` (e.g. `Europe/Berlin`, `UTC`).
    /// The error says what is wrong, in one line.
    pub fn parse(expression: &str, zone: &str) -> Result<Schedule, String> {
        let zone: Tz = zone.parse().map_err(|_| {
            format!(
                "unknown time zone {zone:?} (use an IANA name such as \"UTC\" or \"Europe/Berlin\")"
            )
        })?;
        let fields = expression.split_whitespace().count();
        if !expression.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "schedule {expression:?} has {fields} fields; write 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| format!("schedule {expression:?} is not a cron expression: {e}"))?;
        let schedule = Schedule {
            expression: expression.to_owned(),
            zone,
            cron,
        };
        // An expression that names no instant (e.g. 30 February) would
        // never fire: refuse it rather than keep it silently idle.
        if schedule.next_after(crate::message::now_ms()).is_none() {
            return Err(format!("schedule {expression:?} never fires"));
        }
        Ok(schedule)
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone's IANA name.
    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    /// What the instants depend on: a record of ticks computed for another
    /// expression or zone does not carry over (see `cron::ticker`).
    pub fn fingerprint(&self) -> String {
        format!("{} @ {}", self.expression.trim(), self.zone.name())
    }

    fn at(&self, ms: i64) -> Option<DateTime<Tz>> {
        // Whole seconds: occurrences fall on them, and croner compares
        // wall-clock fields.
        Utc.timestamp_opt(ms.div_euclid(1000), 0)
            .single()
            .map(|t| t.with_timezone(&self.zone))
    }

    /// The first instant strictly after `ms`, if any.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let from = self.at(ms)?;
        self.cron
            .find_next_occurrence(&from, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The latest instant at or before `ms`, if any.
    pub fn latest_until(&self, ms: i64) -> Option<i64> {
        let from = self.at(ms)?;
        self.cron
            .find_previous_occurrence(&from, true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// Up to `n` instants strictly after `ms`.
    pub fn upcoming(&self, ms: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut from = ms;
        while out.len() < n {
            match self.next_after(from) {
                Some(t) => {
                    out.push(t);
                    from = t;
                }
                None => break,
            }
        }
        out
    }

    /// How many instants lie strictly between `after` and `before`,
    /// counting at most `cap` of them (for the log line and metric of
    /// ticks that were skipped).
    pub fn count_between(&self, after: i64, before: i64, cap: u64) -> u64 {
        let mut n = 0;
        let mut from = after;
        while n < cap {
            match self.next_after(from) {
                Some(t) if t < before => {
                    n += 1;
                    from = t;
                }
                _ => break,
            }
        }
        n
    }
}

/// `ms` as an RFC 3339 instant in UTC, to the second (`2026-12-01T22:00:00Z`),
/// the way ticks are named.
pub fn utc(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn five_fields_in_a_zone_name_local_instants() {
        let s = Schedule::parse("0 9 * * 1-5", "Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
        // Friday 2026-12-04 10:00 Berlin = 09:00Z: the next is Monday 09:00
        // Berlin (08:00Z in winter).
        assert_eq!(
            s.next_after(ms("2026-12-04T09:00:00Z")),
            Some(ms("2026-12-07T08:00:00Z"))
        );
        assert_eq!(
            s.latest_until(ms("2026-12-07T08:00:00Z")),
            Some(ms("2026-12-07T08:00:00Z"))
        );
        assert_eq!(
            s.latest_until(ms("2026-12-07T07:59:59.999Z")),
            Some(ms("2026-12-04T08:00:00Z"))
        );
        assert_eq!(s.fingerprint(), "0 9 * * 1-5 @ Europe/Berlin");
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::parse("*/2 * * * * *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        let t = ms("2026-12-01T22:00:01.500Z");
        assert_eq!(s.next_after(t), Some(ms("2026-12-01T22:00:02Z")));
        assert_eq!(s.latest_until(t), Some(ms("2026-12-01T22:00:00Z")));
        assert_eq!(
            s.upcoming(t, 3),
            vec![
                ms("2026-12-01T22:00:02Z"),
                ms("2026-12-01T22:00:04Z"),
                ms("2026-12-01T22:00:06Z")
            ]
        );
        assert_eq!(s.count_between(t, ms("2026-12-01T22:00:10Z"), 100), 4);
        assert_eq!(s.count_between(t, ms("2026-12-01T22:00:10Z"), 2), 2);
        assert_eq!(utc(ms("2026-12-01T22:00:02.250Z")), "2026-12-01T22:00:02Z");
    }

    #[test]
    fn a_daylight_saving_gap_fires_once_after_it_and_a_repeated_hour_once() {
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
        // 02:30 does not exist in Berlin on 2027-03-28 (02:00 CET is 03:00
        // CEST): the tick fires once, at the first instant after the gap
        // (03:00 CEST = 01:00Z), neither lost nor twice.
        assert_eq!(
            s.upcoming(ms("2027-03-27T12:00:00Z"), 2),
            vec![ms("2027-03-28T01:00:00Z"), ms("2027-03-29T00:30:00Z")]
        );
        assert_eq!(
            s.latest_until(ms("2027-03-28T03:00:00Z")),
            Some(ms("2027-03-28T01:00:00Z"))
        );
        // 02:30 happens twice on 2026-10-25 (CEST, then CET an hour
        // later): the tick fires at the first only, and the second is no
        // instant of the schedule, so the ticker never fires it.
        assert_eq!(
            s.upcoming(ms("2026-10-24T12:00:00Z"), 2),
            vec![ms("2026-10-25T00:30:00Z"), ms("2026-10-26T01:30:00Z")]
        );
        assert_eq!(
            s.latest_until(ms("2026-10-25T01:45:00Z")),
            Some(ms("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let err = |e: &str, z: &str| Schedule::parse(e, z).err().unwrap_or_default();
        assert!(err("* * * *", "UTC").contains("4 fields"));
        assert!(err("* * * * * * *", "UTC").contains("7 fields"));
        assert!(err("61 * * * *", "UTC").contains("not a cron expression"));
        assert!(err("0 0 * * *", "Mars/Olympus").contains("unknown time zone"));
        assert!(err("0 0 30 2 *", "UTC").contains("never fires"));
        assert!(err("", "UTC").contains("0 fields"));
        assert!(Schedule::parse("@hourly", "UTC").is_ok());
    }
}
