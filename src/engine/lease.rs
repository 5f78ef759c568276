//! When a leader whose lease renewals fail must stop leading.
//!
//! As client-go's leader election: the holder renews well before the lease
//! expires, retries a failed renewal every `retry_period`, and gives up
//! leading only when `renew_deadline` has passed since its last successful
//! renewal — still before the lease expires (`duration`), so a standby can
//! never take over while the old leader writes. One failed request (an
//! apiserver restart, a dropped connection) costs nothing.

use std::time::{Duration, Instant};

/// The lease's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease stays valid after its last renewal.
    pub duration: Duration,
    /// How long after its last renewal the holder renews again.
    pub renew_after: Duration,
    /// How long after its last successful renewal a holder stops leading.
    pub renew_deadline: Duration,
    /// How long the holder waits between two attempts to renew.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Whether the timings are consistent: the holder renews, then retries
    /// at least once, and stops leading before the lease expires.
    pub const fn is_consistent(&self) -> bool {
        self.renew_after.as_millis() + self.retry_period.as_millis()
            <= self.renew_deadline.as_millis()
            && self.renew_deadline.as_millis() < self.duration.as_millis()
    }

    /// When a holder whose renewal first failed at `first_failure` must stop
    /// leading. It renews `renew_after` after each success, so its last
    /// success was no earlier than `first_failure - renew_after`.
    pub fn step_down_at(&self, first_failure: Instant) -> Instant {
        let last_renewal = first_failure
            .checked_sub(self.renew_after)
            .unwrap_or(first_failure);
        last_renewal + self.renew_deadline
    }

    /// When to try renewing again after a failure at `now`: a retry period
    /// later, or at the deadline if that comes first; `None` once the
    /// deadline has passed (stop leading).
    pub fn next_retry(&self, now: Instant, step_down_at: Instant) -> Option<Instant> {
        (now < step_down_at).then(|| (now + self.retry_period).min(step_down_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: LeaseTiming = LeaseTiming {
        duration: Duration::from_secs(15),
        renew_after: Duration::from_secs(5),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    #[test]
    fn a_failed_renewal_is_retried_until_the_deadline_before_expiry() {
        assert!(TIMING.is_consistent());
        let failed = Instant::now();
        let deadline = TIMING.step_down_at(failed);
        // Last success 5 s before the failure: deadline 5 s after it, 10 s
        // before the lease (15 s after the last success) expires.
        assert_eq!(deadline - failed, Duration::from_secs(5));
        let mut at = failed;
        let mut retries = Vec::new();
        while let Some(next) = TIMING.next_retry(at, deadline) {
            retries.push((next - failed).as_secs());
            at = next;
        }
        assert_eq!(retries, [2, 4, 5]);
        assert_eq!(TIMING.next_retry(deadline, deadline), None);
    }

    #[test]
    fn inconsistent_timings_are_caught() {
        let late = LeaseTiming {
            renew_deadline: Duration::from_secs(15),
            ..TIMING
        };
        assert!(!late.is_consistent());
        let no_retry = LeaseTiming {
            renew_after: Duration::from_secs(9),
            ..TIMING
        };
        assert!(!no_retry.is_consistent());
    }
}
