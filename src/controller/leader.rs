//! Leader election with a coordination.k8s.io/v1 Lease (the
//! `kube-lease-manager` crate): only the leader reconciles and writes;
//! standbys keep their caches and advisory feeds loaded, report ready, and
//! take over when the lease is free.
//!
//! Takeover bound: `LEASE_DURATION` + `RETRY_PERIOD` + cache sync. The
//! crate does not watch the Lease: a standby reads it again when the lease it
//! last read expires, so it finds the lease free (released on SIGTERM) or
//! expired (after a crash) at most `LEASE_DURATION` after the leader's last
//! renewal; taking an expired lease waits 0.1–1 s more (the crate's random
//! back-off), an API error `RETRY_PERIOD`. Cache sync costs nothing then:
//! a standby's caches are synced before it reports ready; the new leader
//! wakes every object once.
//!
//! Renewals, as client-go: the leader renews `LEASE_DURATION - LEASE_GRACE`
//! (5 s) after each renewal; a failed renewal is retried every
//! `RETRY_PERIOD` until `RENEW_DEADLINE` (10 s) after the last success, and
//! only then does the leader exit (its Pod restarts as a standby) — 5 s
//! before the lease expires, which is also the clock-skew margin tolerated
//! between nodes, so a standby never takes over while it still writes. A
//! leader that finds the lease held by another exits at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

use super::metrics::Metrics;
use crate::engine::lease::LeaseTiming;

/// Seconds a lease stays valid after its last renewal.
pub const LEASE_DURATION: u64 = 15;
/// Seconds before expiry the holder renews: 10 s, so it renews 5 s after
/// each renewal and has time to retry a failed one before `RENEW_DEADLINE`.
pub const LEASE_GRACE: u64 = 10;
/// Seconds after its last successful renewal a leader stops leading.
pub const RENEW_DEADLINE: u64 = 10;
/// Seconds between two attempts to renew, and a standby's wait before
/// campaigning again after an API error (it covers the crate's 0.1–1 s wait
/// before taking an expired lease too).
pub const RETRY_PERIOD: u64 = 2;
/// The lease's timings together.
pub const TIMING: LeaseTiming = LeaseTiming {
    duration: Duration::from_secs(LEASE_DURATION),
    renew_after: Duration::from_secs(LEASE_DURATION - LEASE_GRACE),
    renew_deadline: Duration::from_secs(RENEW_DEADLINE),
    retry_period: Duration::from_secs(RETRY_PERIOD),
};
const _: () = assert!(TIMING.is_consistent());
/// The exit code of a process that lost the lease.
pub const LOST_LEASE_EXIT_CODE: i32 = 3;
/// The field manager of the Lease.
pub const MANAGER: &str = "patchloop-leader";

/// Where the lease is and who this process is.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace.
    pub lease_namespace: String,
    /// This process's identity (the Pod name).
    pub identity: String,
}

/// Whether this process leads. Without leader election it always does.
#[derive(Debug, Clone)]
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// A process that always leads (leader election disabled).
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        // The sender is dropped: the value stays true forever.
        drop(tx);
        Leadership { state: rx }
    }

    /// True while this process holds the lease.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once this process holds the lease.
    pub async fn acquired(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|leading| *leading).await;
    }
}

/// Campaigns for the lease until `stopped` resolves, then releases it.
/// Returns the leadership to consult, and the campaign to run.
pub async fn campaign(
    client: Client,
    settings: LeaderSettings,
    metrics: Metrics,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<(Leadership, impl Future<Output = ()> + Send), kube_lease_manager::LeaseManagerError> {
    let manager: LeaseManager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(LEASE_DURATION)
        .with_grace(LEASE_GRACE)
        .with_field_manager(MANAGER)
        .build()
        .await?;
    let (leading, state) = watch::channel(false);
    let campaign = Campaign {
        manager,
        leases: Api::namespaced(client, &settings.lease_namespace),
        settings,
        metrics,
        leading,
    };
    Ok((Leadership { state }, campaign.run(stopped)))
}

/// A running campaign for the lease.
struct Campaign {
    manager: LeaseManager,
    leases: Api<Lease>,
    settings: LeaderSettings,
    metrics: Metrics,
    /// Tells the [`Leadership`] whether this process leads.
    leading: watch::Sender<bool>,
}

impl Campaign {
    /// Follows the lease until `stopped` resolves: leads once acquired,
    /// exits once lost, retries failed renewals until the renew deadline;
    /// then releases the lease if it holds it.
    async fn run(self, stopped: impl Future<Output = ()> + Send + 'static) {
        let identity = self.settings.identity.as_str();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => break,
                changed = self.manager.changed() => match changed {
                    Ok(true) => {
                        tracing::info!(identity, "acquired the lease: leading");
                        let _ = self.leading.send(true);
                    }
                    Ok(false) => lost(identity),
                    Err(e) if *self.leading.borrow() => {
                        self.metrics.lease_renewal_failed();
                        tracing::warn!(error = %e, "could not renew the lease; retrying until the renew deadline");
                        tokio::select! {
                            () = &mut stopped => break,
                            () = self.renew_after_failure() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease campaign failed; retrying");
                        tokio::time::sleep(Duration::from_secs(RETRY_PERIOD)).await;
                    }
                },
            }
        }
        self.release().await;
    }

    /// Retries a failed renewal (see [`Renewing::retry`]); exits when the
    /// lease is lost or the renew deadline passes.
    async fn renew_after_failure(&self) {
        let identity = self.settings.identity.as_str();
        let retrying = Renewing {
            campaign: self,
            failed_at: jiff::Timestamp::now(),
            step_down_at: TIMING.step_down_at(Instant::now()),
        };
        match retrying.retry().await {
            Renewal::Renewed => {
                tracing::info!(identity, "renewed the lease after failures: still leading");
            }
            Renewal::Lost => lost(identity),
            Renewal::DeadlinePassed => {
                tracing::error!(
                    identity,
                    "could not renew the lease within {RENEW_DEADLINE}s: exiting so a standby takes over safely"
                );
                std::process::exit(LOST_LEASE_EXIT_CODE);
            }
        }
    }

    /// Releases the lease at shutdown, when this process holds it.
    async fn release(&self) {
        if *self.leading.borrow() {
            match self.manager.release().await {
                Ok(()) => tracing::info!("released the lease"),
                Err(e) => tracing::warn!(error = %e, "could not release the lease"),
            }
        }
    }
}

fn lost(identity: &str) -> ! {
    tracing::error!(identity, "lost the lease: exiting to restart as a standby");
    std::process::exit(LOST_LEASE_EXIT_CODE);
}

/// How retrying a failed renewal ended.
enum Renewal {
    Renewed,
    Lost,
    DeadlinePassed,
}

/// A leader retrying a failed renewal.
struct Renewing<'a> {
    campaign: &'a Campaign,
    /// When the first renewal of this run of failures failed.
    failed_at: jiff::Timestamp,
    step_down_at: Instant,
}

impl Renewing<'_> {
    /// Retries every `RETRY_PERIOD` until a renewal succeeds, the lease
    /// turns out held by another, or the renew deadline passes.
    async fn retry(&self) -> Renewal {
        let mut now = Instant::now();
        while let Some(next) = TIMING.next_retry(now, self.step_down_at) {
            tokio::time::sleep_until(next.into()).await;
            if Instant::now() >= self.step_down_at {
                break;
            }
            // The crate renews at once (the renewal is overdue), then waits
            // quietly for the next one: it returns only on an error or a
            // change of holder.
            match tokio::time::timeout_at(self.step_down_at.into(), self.campaign.manager.changed())
                .await
            {
                Ok(Ok(true)) => return Renewal::Renewed,
                Ok(Ok(false)) => return Renewal::Lost,
                Ok(Err(e)) => {
                    self.campaign.metrics.lease_renewal_failed();
                    tracing::warn!(error = %e, "could not renew the lease; retrying");
                }
                // Quiet until the deadline: a retry renewed the lease, or a
                // request hangs. The Lease itself says which.
                Err(_) => {
                    return if self.renewed_since_the_failure().await {
                        Renewal::Renewed
                    } else {
                        Renewal::DeadlinePassed
                    };
                }
            }
            now = Instant::now();
        }
        Renewal::DeadlinePassed
    }

    async fn renewed_since_the_failure(&self) -> bool {
        let read = tokio::time::timeout(
            Duration::from_secs(RETRY_PERIOD),
            self.campaign.leases.get(&self.campaign.settings.lease_name),
        )
        .await;
        let Ok(Ok(lease)) = read else { return false };
        lease.spec.is_some_and(|s| {
            s.holder_identity.as_deref() == Some(self.campaign.settings.identity.as_str())
                && s.renew_time.is_some_and(|t| t.0 >= self.failed_at)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_election_the_process_always_leads() {
        let l = Leadership::always();
        assert!(l.is_leader());
        l.acquired().await;
    }
}
