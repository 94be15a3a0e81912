//! Rate limits: a token bucket per handler, or per key of a handler.
//!
//! A bucket holds at most `burst` tokens (default: `n`) and gains `n`
//! tokens per `per`, continuously; each job start takes one. So a quiet
//! handler may start `burst` jobs at once, then `n` per `per` on average,
//! and over any window of length `w` at most `burst + n * w / per` start.
//! The bucket is plain data (`Bucket`), so the same arithmetic serves one
//! host (in memory) and many (a shared record updated with compare-and-set,
//! see `transport::jetstream::flow`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `n` per `per`, with at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Jobs per interval.
    pub n: u32,
    /// The interval.
    pub per: Duration,
    /// The most that may start at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// Parses `N/INTERVAL` (`10/1s`, `600/1m`, `5/s`: an interval without a
    /// number is one of it); `burst` defaults to `n`.
    pub fn parse(s: &str, burst: Option<u32>) -> Result<Rate, String> {
        let (n, per) = s
            .split_once('/')
            .ok_or_else(|| format!("rate {s:?} is not N/INTERVAL (such as 10/1s or 600/1m)"))?;
        let n: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("rate {s:?}: N is a whole number of jobs, at least 1"))?;
        let per = per.trim();
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(per)
        } else {
            humantime::parse_duration(&format!("1{per}"))
        }
        .map_err(|e| format!("rate {s:?}: interval: {e}"))?;
        if per < Duration::from_millis(1) || per > Duration::from_secs(7 * 86_400) {
            return Err(format!("rate {s:?}: the interval is from 1ms to 7 days"));
        }
        let burst = burst.unwrap_or(n);
        if burst == 0 {
            return Err("rate_burst is at least 1".into());
        }
        Ok(Rate { n, per, burst })
    }

    fn per_ms(&self) -> f64 {
        self.per.as_secs_f64() * 1000.0
    }
}

/// A bucket's level at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens (fractional: they accrue continuously).
    pub tokens: f64,
    /// Unix ms of `tokens`.
    pub at: i64,
}

impl Bucket {
    /// A full bucket at `now` (what a handler that never ran has).
    pub fn full(rate: &Rate, now: i64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// The level at `now` (a clock that went back adds nothing).
    pub fn at(&self, rate: &Rate, now: i64) -> Bucket {
        let elapsed = (now - self.at).max(0) as f64;
        let tokens = (self.tokens + elapsed * f64::from(rate.n) / rate.per_ms())
            .min(f64::from(rate.burst))
            .max(0.0);
        Bucket {
            tokens,
            at: now.max(self.at),
        }
    }

    /// Takes up to `want` tokens at `now`: how many it got (whole ones),
    /// and the bucket after.
    pub fn take(&self, rate: &Rate, now: i64, want: u32) -> (u32, Bucket) {
        let mut b = self.at(rate, now);
        let got = (b.tokens.floor() as u32).min(want);
        b.tokens -= f64::from(got);
        (got, b)
    }

    /// The bucket at `now` with `n` tokens given back (a start that did
    /// not happen after all), at most full.
    pub fn give_back(&self, rate: &Rate, now: i64, n: u32) -> Bucket {
        let mut b = self.at(rate, now);
        b.tokens = (b.tokens + f64::from(n)).min(f64::from(rate.burst));
        b
    }

    /// Milliseconds until the next whole token (0 if there is one).
    pub fn wait_ms(&self, rate: &Rate, now: i64) -> i64 {
        let b = self.at(rate, now);
        if b.tokens >= 1.0 {
            return 0;
        }
        ((1.0 - b.tokens) * rate.per_ms() / f64::from(rate.n)).ceil() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_the_rule_in_the_error() {
        let r = Rate::parse("10/1s", None).expect("parse");
        assert_eq!((r.n, r.per, r.burst), (10, Duration::from_secs(1), 10));
        let r = Rate::parse("600 / m", Some(5)).expect("parse");
        assert_eq!((r.n, r.per, r.burst), (600, Duration::from_secs(60), 5));
        for bad in ["10", "0/1s", "x/1s", "10/", "10/0s", "10/1y2", "-1/1s"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad:?}");
        }
        assert!(Rate::parse("1/1s", Some(0)).is_err());
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let rate = Rate::parse("10/1s", Some(3)).expect("parse");
        let b = Bucket::full(&rate, 0);
        let (got, b) = b.take(&rate, 0, 5);
        assert_eq!(got, 3);
        assert_eq!(b.wait_ms(&rate, 0), 100);
        let (got, b) = b.take(&rate, 50, 5);
        assert_eq!(got, 0);
        let (got, b) = b.take(&rate, 250, 5);
        assert_eq!(got, 2);
        // A long quiet spell fills it to the burst, never more.
        let (got, _) = b.take(&rate, 100_000, 50);
        assert_eq!(got, 3);
        // Over 10 s of steady demand: the burst plus the rate, no more.
        let mut b = Bucket::full(&rate, 0);
        let mut total = 0;
        for t in (0..=10_000).step_by(7) {
            let (got, next) = b.take(&rate, t, 100);
            total += got;
            b = next;
        }
        assert!((100..=103).contains(&total), "{total}");
        // A clock that goes back adds nothing.
        let (_, b) = Bucket::full(&rate, 1000).take(&rate, 1000, 3);
        assert_eq!(b.take(&rate, 0, 1).0, 0);
    }
}
