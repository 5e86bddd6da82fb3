//! Leader election on a coordination.k8s.io Lease (via the `kube-lease-manager` crate).
//!
//! The holder renews every third of the lease duration; a standby sleeps until the Lease it
//! last saw expires and then takes it, so after a leader dies a standby leads within the lease
//! duration (plus one poll). A leader that shuts down gracefully releases the Lease (clears its
//! holder), so the standby takes it at its next check without having to break a stale lock.
//! With leader election off, this replica always leads.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinHandle;

use crate::{Config, Error, Result};

/// Field manager of the Lease writes.
const LEASE_FIELD_MANAGER: &str = "trellis-operator-lease";

/// This replica's view of the leadership; clones share it.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    lease: String,
    state: watch::Receiver<bool>,
    /// Tells the election task to give the Lease up and end (`None` when election is off).
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Leadership {
    /// Joins the election (or, with leader election off, leads at once).
    pub async fn start(client: Client, config: &Config, identity: &str) -> Result<Self> {
        let lease = format!("{}/{}", config.namespace, config.lease_name);
        if !config.leader_election() {
            let (tx, state) = watch::channel(true);
            // The flag never changes; the sender must outlive every receiver.
            std::mem::forget(tx);
            return Ok(Leadership { inner: Arc::new(Inner { lease, state, stop: Mutex::new(None) }) });
        }
        let (duration, grace) = timing(config.lease_duration);
        let manager = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(identity)
            .with_duration(duration)
            .with_grace(grace)
            .with_field_manager(LEASE_FIELD_MANAGER)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await
            .map_err(|source| Error::Lease { lease: lease.clone(), source })?;
        let (tx, state) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(elect(manager, tx, stop_rx, lease.clone()));
        tracing::info!(%lease, %identity, duration, "joined leader election");
        Ok(Leadership { inner: Arc::new(Inner { lease, state, stop: Mutex::new(Some((stop_tx, task))) }) })
    }

    /// True while this replica holds the Lease.
    pub fn is_leader(&self) -> bool {
        *self.inner.state.borrow()
    }

    /// Waits until this replica leads.
    pub async fn acquired(&self) -> Result<()> {
        let mut state = self.inner.state.clone();
        state.wait_for(|v| *v).await.map(|_| ()).map_err(|_| Error::Lease {
            lease: self.inner.lease.clone(),
            source: kube_lease_manager::LeaseManagerError::InconsistentState("the election task ended".into()),
        })
    }

    /// Completes when this replica stops leading (never, when election is off).
    pub async fn lost(&self) {
        let mut state = self.inner.state.clone();
        // An ended election task counts as lost.
        let _ = state.wait_for(|v| !*v).await;
    }

    /// Gives the Lease up (if held) and leaves the election.
    pub async fn release(&self) {
        let Some((stop, task)) = self.inner.stop.lock().await.take() else { return };
        let _ = stop.send(());
        if let Err(e) = task.await {
            tracing::warn!(lease = %self.inner.lease, error = %e, "leader election task failed");
        }
    }
}

/// The election loop: publishes every change of leadership until told to stop, then releases.
async fn elect(manager: LeaseManager, state: watch::Sender<bool>, mut stop: oneshot::Receiver<()>, lease: String) {
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = manager.changed() => match changed {
                Ok(leading) => {
                    backoff = Duration::from_millis(500);
                    if leading {
                        tracing::info!(%lease, "acquired the Lease");
                    } else {
                        tracing::warn!(%lease, "lost the Lease");
                    }
                    state.send_replace(leading);
                }
                Err(e) => {
                    tracing::warn!(%lease, error = %e, retry_in = ?backoff, "leader election");
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
        }
    }
    state.send_replace(false);
    match manager.release().await {
        Ok(()) => tracing::info!(%lease, "released the Lease"),
        Err(e) => tracing::warn!(%lease, error = %e, "releasing the Lease"),
    }
}

/// Lease duration and the crate's "grace" (renew this long before expiry): renewal every third
/// of the duration.
pub fn timing(duration: u64) -> (u64, u64) {
    let duration = duration.max(3);
    (duration, duration - duration / 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_renews_every_third_of_the_duration() {
        assert_eq!(timing(15), (15, 10));
        assert_eq!(timing(3), (3, 2));
        let (d, g) = timing(30);
        assert_eq!(d - g, 10);
        assert!(g < d && g > 0, "the crate requires 0 < grace < duration");
    }
}
