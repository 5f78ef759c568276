//! Verdicts first: while Workloads are being judged, bookkeeping — the
//! Inventory reconciler's status writes (`Ready`, `observedGeneration`) and
//! the Event queue — waits for a pause.
//!
//! After a start, or when a fleet's inventories arrive together, each
//! Workload and each Inventory gets a status write and many Workloads an
//! Event, all at the same apiserver, which is the bottleneck. A Workload's
//! status is what people and alerts wait for; an Inventory's `Ready` and an
//! Event can follow a few seconds later. Bookkeeping is delayed, never
//! starved: after waiting [`BOOKKEEPING_PATIENCE`] for a pause it goes
//! anyway, [`BOOKKEEPING_WHILE_JUDGING`] at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// How long bookkeeping waits for the judging to pause before it goes
/// anyway (a fleet judged without pause still gets its Inventories' status
/// and its Events). Well within a reconcile's time limit, since the wait is
/// part of the Inventory reconcile.
pub const BOOKKEEPING_PATIENCE: Duration = Duration::from_secs(10);

/// Bookkeeping requests in flight once their patience has run out while
/// Workloads are still being judged; when nothing is judged, each goes at
/// its own concurrency.
pub const BOOKKEEPING_WHILE_JUDGING: usize = 1;

/// Counts the Workload reconciles in flight and holds bookkeeping back by
/// them.
#[derive(Debug)]
pub struct VerdictsFirst {
    judging: AtomicUsize,
    paused: Notify,
    patience: Duration,
    bookkeeping: Semaphore,
}

impl Default for VerdictsFirst {
    fn default() -> Self {
        VerdictsFirst::with_patience(BOOKKEEPING_PATIENCE)
    }
}

/// Held by a Workload reconcile for as long as it runs.
#[derive(Debug)]
pub struct Judging<'a>(&'a VerdictsFirst);

impl Drop for Judging<'_> {
    fn drop(&mut self) {
        if self.0.judging.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.paused.notify_waiters();
        }
    }
}

impl VerdictsFirst {
    /// Bookkeeping waits at most `patience` for a pause.
    pub fn with_patience(patience: Duration) -> Self {
        VerdictsFirst {
            judging: AtomicUsize::new(0),
            paused: Notify::new(),
            patience,
            bookkeeping: Semaphore::new(BOOKKEEPING_WHILE_JUDGING),
        }
    }

    /// Marks one Workload reconcile in flight until the guard drops.
    pub fn judging(&self) -> Judging<'_> {
        self.judging.fetch_add(1, Ordering::AcqRel);
        Judging(self)
    }

    /// Waits until no Workload is being judged: then `None`, go ahead. If
    /// the judging goes on past the patience, waits for one of the few
    /// bookkeeping slots instead, held for the rest of the bookkeeping work.
    pub async fn bookkeeping(&self) -> Option<SemaphorePermit<'_>> {
        let pause = async {
            loop {
                let paused = self.paused.notified();
                tokio::pin!(paused);
                // Registered before the check, so a pause in between is not
                // missed.
                paused.as_mut().enable();
                if self.judging.load(Ordering::Acquire) == 0 {
                    return;
                }
                paused.await;
            }
        };
        match tokio::time::timeout(self.patience, pause).await {
            Ok(()) => None,
            // The semaphore is never closed.
            Err(_) => self.bookkeeping.acquire().await.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    #[tokio::test]
    async fn bookkeeping_is_free_while_nothing_is_judged() {
        let lanes = VerdictsFirst::with_patience(Duration::from_secs(3600));
        let held: Vec<_> = futures::future::join_all((0..5).map(|_| lanes.bookkeeping())).await;
        assert!(held.iter().all(Option::is_none));
    }

    #[tokio::test]
    async fn bookkeeping_waits_for_the_judging_to_pause() {
        let lanes = VerdictsFirst::with_patience(Duration::from_secs(3600));
        let first = lanes.judging();
        let second = lanes.judging();
        let waiting = lanes.bookkeeping();
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(first);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        // The last Workload reconcile ends: bookkeeping goes, freely.
        drop(second);
        assert!(matches!(
            futures::poll!(waiting.as_mut()),
            Poll::Ready(None)
        ));
    }

    #[tokio::test]
    async fn past_its_patience_bookkeeping_goes_a_few_at_a_time() {
        let lanes = VerdictsFirst::with_patience(Duration::from_millis(20));
        let _judging = lanes.judging();
        let mut held = Vec::new();
        for _ in 0..BOOKKEEPING_WHILE_JUDGING {
            held.push(lanes.bookkeeping().await);
        }
        assert!(held.iter().all(Option::is_some));
        // The next one waits for a slot even after its patience ...
        let next = lanes.bookkeeping();
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), next.as_mut())
                .await
                .is_err()
        );
        // ... and gets it when one is released.
        held.pop();
        assert!(matches!(
            futures::poll!(next.as_mut()),
            Poll::Ready(Some(_))
        ));
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
