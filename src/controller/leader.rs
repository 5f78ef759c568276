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
//! wakes every object once. The leader renews `LEASE_GRACE` before expiry,
//! which is also the clock-skew margin tolerated between nodes. A leader that loses the lease, or cannot
//! renew it, exits at once (its Pod restarts as a standby) rather than risk
//! two writers.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

/// Seconds a lease stays valid after its last renewal.
pub const LEASE_DURATION: u64 = 15;
/// Seconds before expiry the holder renews (and the clock-skew margin).
pub const LEASE_GRACE: u64 = 5;
/// Seconds a standby waits before campaigning again after an API error (it
/// covers the crate's 0.1–1 s wait before taking an expired lease too).
pub const RETRY_PERIOD: u64 = 2;
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
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<(Leadership, impl Future<Output = ()> + Send), kube_lease_manager::LeaseManagerError> {
    let manager: LeaseManager = LeaseManagerBuilder::new(client, &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(LEASE_DURATION)
        .with_grace(LEASE_GRACE)
        .with_field_manager(MANAGER)
        .build()
        .await?;
    let (tx, rx) = watch::channel(false);
    let identity = settings.identity;
    let run = async move {
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => break,
                changed = manager.changed() => match changed {
                    Ok(true) => {
                        tracing::info!(identity = %identity, "acquired the lease: leading");
                        let _ = tx.send(true);
                    }
                    Ok(false) => {
                        tracing::error!(identity = %identity, "lost the lease: exiting to restart as a standby");
                        std::process::exit(LOST_LEASE_EXIT_CODE);
                    }
                    Err(e) if *tx.borrow() => {
                        tracing::error!(error = %e, "could not renew the lease: exiting so a standby takes over safely");
                        std::process::exit(LOST_LEASE_EXIT_CODE);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease campaign failed; retrying");
                        tokio::time::sleep(Duration::from_secs(RETRY_PERIOD)).await;
                    }
                },
            }
        }
        if *tx.borrow() {
            match manager.release().await {
                Ok(()) => tracing::info!("released the lease"),
                Err(e) => tracing::warn!(error = %e, "could not release the lease"),
            }
        }
    };
    Ok((Leadership { state: rx }, run))
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
