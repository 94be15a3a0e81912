//! Priorities on the embedded queue: how a claim splits its room between
//! the most urgent due jobs and the oldest ones.
//!
//! Strict priority would starve: with a steady stream of priority-9 posts
//! a priority-0 job would never run. So a claim of `max` jobs takes at
//! most `max - max / 4` by priority (highest first, oldest first within a
//! level) and the rest in plain queue order (oldest due job first,
//! whatever its priority); a claim of fewer than 4 is, one time in
//! [`FIFO_ONE_IN`] at random, a queue-order claim. So at least a quarter
//! of the starts (on average) go to the oldest waiting jobs: a job at
//! queue position `p` starts within about `4 p` starts, however busy the
//! higher levels are, and with nothing urgent due the order is exactly
//! the queue's.

/// One claim in this many (of fewer than 4 jobs) ignores priority.
pub const FIFO_ONE_IN: u32 = 4;

/// How many of a claim of `max` may go by priority.
pub fn urgent_share(max: usize) -> usize {
    if max >= 4 {
        max - max / 4
    } else if fastrand::u32(0..FIFO_ONE_IN) == 0 {
        0
    } else {
        max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_room_is_kept_for_the_oldest_jobs() {
        assert_eq!(urgent_share(4), 3);
        assert_eq!(urgent_share(64), 48);
        assert_eq!(urgent_share(0), 0);
        let fifo = (0..4000).filter(|_| urgent_share(1) == 0).count();
        assert!((600..1400).contains(&fifo), "{fifo}");
    }
}
