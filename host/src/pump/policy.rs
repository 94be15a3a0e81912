//! Brighter's handler policies: exponential backoff with jitter, and a
//! circuit breaker that pauses a handler's pump after N consecutive failures
//! instead of burning every message's attempts against a broken dependency.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Policy;

/// Delay before attempt `attempt + 1`, after `attempt` failed (1-based):
/// `initial * 2^(attempt-1)` capped at `max`, then "equal jitter" (half fixed,
/// half random) so retries of a burst do not arrive together.
pub fn backoff(policy: &Policy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = policy
        .backoff_initial
        .saturating_mul(1u32 << exp)
        .min(policy.backoff_max);
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Counts consecutive failures of one handler; opens for a cool-down when
/// they reach the policy's threshold.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// A closed breaker for `policy` (threshold 0: never opens).
    pub fn new(policy: &Policy) -> Breaker {
        Breaker {
            threshold: policy.breaker_failures,
            cooldown: policy.breaker_cooldown,
            inner: Mutex::new(BreakerState::default()),
        }
    }

    /// A success closes the breaker and resets the count.
    pub fn success(&self) {
        if let Ok(mut s) = self.inner.lock() {
            s.failures = 0;
            s.open_until = None;
        }
    }

    /// A failure; returns true when this one opened the breaker.
    pub fn failure(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let Ok(mut s) = self.inner.lock() else {
            return false;
        };
        s.failures += 1;
        if s.failures >= self.threshold && s.open_until.is_none() {
            s.open_until = Some(Instant::now() + self.cooldown);
            s.failures = 0;
            return true;
        }
        false
    }

    /// How long the pump must still pause, if the breaker is open.
    pub fn open_for(&self) -> Option<Duration> {
        let mut s = self.inner.lock().ok()?;
        let until = s.open_until?;
        let now = Instant::now();
        if until <= now {
            // Half-open: let work through; the next failure re-opens it.
            s.open_until = None;
            s.failures = self.threshold.saturating_sub(1);
            return None;
        }
        Some(until - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_millis(50),
            ..Policy::default()
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_caps() {
        let p = policy();
        for _ in 0..100 {
            let d1 = backoff(&p, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = backoff(&p, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d20 = backoff(&p, 20);
            assert!(d20 >= Duration::from_millis(500) && d20 <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn breaker_opens_after_threshold_and_half_opens_after_cooldown() {
        let b = Breaker::new(&policy());
        assert!(!b.failure());
        assert!(!b.failure());
        b.success();
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "third consecutive failure opens it");
        assert!(b.open_for().is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.open_for().is_none(), "cool-down over");
        assert!(b.failure(), "one more failure while half-open re-opens it");
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new(&Policy {
            breaker_failures: 0,
            ..policy()
        });
        for _ in 0..100 {
            assert!(!b.failure());
        }
        assert!(b.open_for().is_none());
    }
}
