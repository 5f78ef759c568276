//! Per-object retry backoff: an object whose reconcile keeps failing is
//! retried after 5 s, 10 s, 20 s … up to 5 min, and at once on its normal
//! schedule again after one success.
//!
//! kube-runtime 5 requeues a failed object after whatever delay the error
//! policy returns, with no memory of earlier failures: a fixed delay would
//! retry a broken object every few seconds forever, each attempt costing
//! apiserver requests and a log line. The delays carry a small jitter
//! (never above the schedule), derived from the object and the attempt, so
//! objects that failed together (an apiserver outage) do not retry in step.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

/// The first retry delay.
pub const FIRST: Duration = Duration::from_secs(5);
/// The longest retry delay.
pub const CAP: Duration = Duration::from_secs(300);
/// The largest share of a delay the jitter takes off, in thousandths.
const JITTER_PER_MILLE: u64 = 100;

/// The retry delay after `failures` consecutive failures (1 or more):
/// `first` doubled each time, at most `cap`, less up to a tenth chosen by
/// `seed`.
pub fn delay(first: Duration, cap: Duration, failures: u32, seed: u64) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let full = first.saturating_mul(1 << doublings).min(cap);
    let off = full.as_millis() * u128::from(seed % (JITTER_PER_MILLE + 1)) / 1000;
    full.saturating_sub(Duration::from_millis(u64::try_from(off).unwrap_or(0)))
}

/// Consecutive failures per object, and the delay each asks for.
#[derive(Debug)]
pub struct Backoff<K> {
    first: Duration,
    cap: Duration,
    failures: HashMap<K, u32>,
}

impl<K: Hash + Eq + Clone> Default for Backoff<K> {
    fn default() -> Self {
        Backoff::new(FIRST, CAP)
    }
}

impl<K: Hash + Eq + Clone> Backoff<K> {
    /// A backoff from `first` doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            failures: HashMap::new(),
        }
    }

    /// Records one more failure of `key`: its count of consecutive
    /// failures, and how long to wait before the next attempt.
    pub fn failed(&mut self, key: &K) -> (u32, Duration) {
        let count = self.failures.entry(key.clone()).or_insert(0);
        *count = count.saturating_add(1);
        let failures = *count;
        let mut h = DefaultHasher::new();
        (key, failures).hash(&mut h);
        (failures, delay(self.first, self.cap, failures, h.finish()))
    }

    /// Records a success of `key`: its next failure starts over at `first`.
    /// Returns whether it had been failing.
    pub fn succeeded(&mut self, key: &K) -> bool {
        self.failures.remove(key).is_some()
    }

    /// The consecutive failures of `key` so far.
    pub fn failures(&self, key: &K) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_from_five_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| delay(FIRST, CAP, n, 0).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        // However long it has failed, never more than the cap, never overflow.
        assert_eq!(delay(FIRST, CAP, u32::MAX, 0), CAP);
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_a_tenth() {
        for failures in 1..12 {
            let full = delay(FIRST, CAP, failures, 0);
            for seed in [1, 7, 99, 100, 12_345, u64::MAX] {
                let d = delay(FIRST, CAP, failures, seed);
                assert!(
                    d <= full && d >= full - full / 10,
                    "{failures} {seed}: {d:?}"
                );
            }
        }
        assert_eq!(delay(FIRST, CAP, 1, 100), Duration::from_millis(4500));
    }

    #[test]
    fn each_object_backs_off_on_its_own_and_a_success_resets_it() {
        let mut b: Backoff<&str> = Backoff::default();
        let full = |n| delay(FIRST, CAP, n, 0);
        for n in 1..=4 {
            let (count, d) = b.failed(&"a");
            assert_eq!(count, n);
            assert!(d <= full(n) && d >= full(n) - full(n) / 10);
        }
        // Another object starts at the first delay.
        assert_eq!(b.failed(&"b").0, 1);
        assert!(b.succeeded(&"a"));
        assert!(!b.succeeded(&"a"));
        assert_eq!(b.failures(&"a"), 0);
        let (count, d) = b.failed(&"a");
        assert_eq!(count, 1);
        assert!(d <= FIRST);
        assert_eq!(b.failures(&"b"), 1);
    }

    #[test]
    fn objects_that_fail_together_do_not_retry_in_step() {
        let mut b: Backoff<String> = Backoff::default();
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|i| b.failed(&format!("w-{i}")).1).collect();
        assert!(delays.len() > 1, "{delays:?}");
    }
}
