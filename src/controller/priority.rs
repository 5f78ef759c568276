//! Verdicts first: while Workloads are being judged, bookkeeping — the
//! Inventory reconciler's status writes (`Ready`, `observedGeneration`) and
//! the Event queue — goes a few requests at a time.
//!
//! After a start, or when a fleet's inventories arrive together, each
//! Workload and each Inventory gets a status write and many Workloads an
//! Event, all at the same apiserver, which is the bottleneck. A Workload's
//! status is what people and alerts wait for; an Inventory's `Ready` and an
//! Event can follow a few seconds later. Bookkeeping is slowed, never
//! stopped: a fleet judged without pause still gets its Inventories' status
//! and its Events, [`BOOKKEEPING_WHILE_JUDGING`] at a time.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Bookkeeping requests (Inventory reconciles, Event publications) in flight
/// while any Workload is being judged; otherwise each goes at its own
/// concurrency.
pub const BOOKKEEPING_WHILE_JUDGING: usize = 1;

/// Counts the Workload reconciles in flight and paces bookkeeping by them.
#[derive(Debug)]
pub struct VerdictsFirst {
    judging: AtomicUsize,
    bookkeeping: Semaphore,
}

impl Default for VerdictsFirst {
    fn default() -> Self {
        VerdictsFirst {
            judging: AtomicUsize::new(0),
            bookkeeping: Semaphore::new(BOOKKEEPING_WHILE_JUDGING),
        }
    }
}

/// Held by a Workload reconcile for as long as it runs.
#[derive(Debug)]
pub struct Judging<'a>(&'a VerdictsFirst);

impl Drop for Judging<'_> {
    fn drop(&mut self) {
        self.0.judging.fetch_sub(1, Ordering::AcqRel);
    }
}

impl VerdictsFirst {
    /// Marks one Workload reconcile in flight until the guard drops.
    pub fn judging(&self) -> Judging<'_> {
        self.judging.fetch_add(1, Ordering::AcqRel);
        Judging(self)
    }

    /// Waits for a bookkeeping slot if Workloads are being judged now;
    /// `None` (go ahead) when none is. The permit is held for the rest of
    /// the bookkeeping work.
    pub async fn bookkeeping(&self) -> Option<SemaphorePermit<'_>> {
        if self.judging.load(Ordering::Acquire) == 0 {
            return None;
        }
        // The semaphore is never closed.
        self.bookkeeping.acquire().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bookkeeping_is_free_while_nothing_is_judged() {
        let lanes = VerdictsFirst::default();
        let held: Vec<_> = futures::future::join_all((0..5).map(|_| lanes.bookkeeping())).await;
        assert!(held.iter().all(Option::is_none));
        assert_eq!(
            lanes.bookkeeping.available_permits(),
            BOOKKEEPING_WHILE_JUDGING
        );
    }

    #[tokio::test]
    async fn bookkeeping_goes_a_few_at_a_time_while_workloads_are_judged() {
        let lanes = VerdictsFirst::default();
        let judging = lanes.judging();
        let mut held = Vec::new();
        for _ in 0..BOOKKEEPING_WHILE_JUDGING {
            held.push(lanes.bookkeeping().await);
        }
        assert!(held.iter().all(Option::is_some));
        // The next one waits for a slot ...
        let next = lanes.bookkeeping();
        tokio::pin!(next);
        assert!(futures::poll!(next.as_mut()).is_pending());
        // ... and gets it when one is released.
        held.pop();
        assert!(matches!(
            futures::poll!(next.as_mut()),
            std::task::Poll::Ready(Some(_))
        ));
        drop(judging);
        // Once nothing is judged, bookkeeping no longer waits.
        assert!(lanes.bookkeeping().await.is_none());
    }

    #[test]
    fn the_count_follows_the_guards() {
        let lanes = VerdictsFirst::default();
        let a = lanes.judging();
        let b = lanes.judging();
        assert_eq!(lanes.judging.load(Ordering::Acquire), 2);
        drop(a);
        assert_eq!(lanes.judging.load(Ordering::Acquire), 1);
        drop(b);
        assert_eq!(lanes.judging.load(Ordering::Acquire), 0);
    }
}
