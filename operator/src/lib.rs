//! trellis-operator: the cluster side of Trellis.
//!
//! One process per replica. [`run`] connects to the cluster (KUBECONFIG, then in-cluster),
//! creates its namespace, serves /healthz /readyz /metrics, and takes part in leader election
//! on a coordination.k8s.io Lease ([`lease`]). Only the leader runs the controllers
//! ([`controllers`]), so only the leader writes; a standby waits and takes over within the lease
//! duration. Every controller is `reconcile(obj, ctx) -> Result<Action>` plus `error_policy`, a
//! pipeline of pure steps (validate, defaults, [`render`]) with I/O only at its ends (read,
//! server-side apply under the controller's field manager, status).

pub mod conditions;
pub mod config;
pub mod controllers;
pub mod health;
pub mod heap;
pub mod ipam;
pub mod ippool;
pub mod lease;
pub mod metrics;
pub mod pool_view;
pub mod pools;
pub mod render;

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};

pub use config::Config;

/// Field manager of everything the operator server-side-applies.
pub const FIELD_MANAGER: &str = "trellis-operator";
/// Label on every object the operator renders.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "trellis-operator";

/// Everything that can go wrong in the operator. The variant names double as the `error` label
/// of the failure metric ([`Error::metric_label`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot find a cluster (KUBECONFIG, then in-cluster config): {0}")]
    Connect(#[source] kube::Error),
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid Installation: {0}")]
    InvalidInstallation(String),
    #[error("not the leader any more: writes are left to the new leader")]
    NotLeader,
    #[error("leader election on Lease {lease}: {source}")]
    Lease {
        lease: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("health server on {addr}: {source}")]
    Health {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps a kube error with what the operator was doing.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube { context: context.into(), source }
    }

    /// Low-cardinality label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Connect(_) => "connect",
            Error::Kube { .. } => "kube",
            Error::InvalidInstallation(_) => "invalid_installation",
            Error::NotLeader => "not_leader",
            Error::Lease { .. } => "lease",
            Error::Health { .. } => "health",
            Error::Serialize { .. } => "serialize",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A signal every controller stops on: the process shuts down or leadership is lost.
pub type Stop = Shared<BoxFuture<'static, ()>>;

/// What every reconcile gets: the client, the options, an event recorder, metrics, and the
/// leadership flag that gates writes.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    /// Who publishes the Events (controller `trellis-operator`, instance = identity).
    pub reporter: Reporter,
    pub metrics: Arc<metrics::Metrics>,
    pub leader: lease::Leadership,
}

impl Context {
    /// Fails with [`Error::NotLeader`] unless this replica holds the Lease right now; called
    /// before writes, so a replica that just lost the Lease does not write after the new leader.
    pub fn ensure_leader(&self) -> Result<()> {
        if self.leader.is_leader() { Ok(()) } else { Err(Error::NotLeader) }
    }
}

/// Runs the operator against the cluster found the usual way until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let client = Client::try_default().await.map_err(Error::Connect)?;
    run_with_client(client, config, shutdown).await
}

/// [`run`] with a given client (tests connect to their own API server).
pub async fn run_with_client(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let shutdown: Stop = shutdown.boxed().shared();
    let metrics = Arc::new(metrics::Metrics::default());
    let health = health::serve(config.health_addr, metrics.clone(), shutdown.clone()).await?;
    heap::spawn_trimmer(shutdown.clone());
    ensure_namespace(&client, &config.namespace).await?;

    let identity = config.identity();
    let leader = lease::Leadership::start(client.clone(), &config, &identity).await?;
    health.set_ready(true);
    tracing::info!(%identity, namespace = %config.namespace, leader_election = config.leader_election(), "operator started");

    let reporter = Reporter { controller: MANAGED_BY.into(), instance: Some(identity) };
    let recorder = Recorder::new(client.clone(), reporter.clone());
    loop {
        tokio::select! {
            _ = shutdown.clone() => break,
            acquired = leader.acquired() => acquired?,
        }
        tracing::info!("leading: starting the controllers");
        metrics.leader.set(1);
        let ctx = Arc::new(Context {
            client: client.clone(),
            config: config.clone(),
            recorder: recorder.clone(),
            reporter: reporter.clone(),
            metrics: metrics.clone(),
            leader: leader.clone(),
        });
        let lost = leader.clone();
        let stop: Stop = futures::future::select(shutdown.clone(), async move { lost.lost().await }.boxed())
            .map(|_| ())
            .boxed()
            .shared();
        controllers::run(ctx, stop).await;
        metrics.leader.set(0);
        if shutdown.peek().is_some() {
            break;
        }
        tracing::warn!("lost the Lease: controllers stopped, waiting to lead again");
    }
    health.set_ready(false);
    leader.release().await;
    tracing::info!("operator stopped");
    Ok(())
}

/// Creates the operator's namespace when it is missing (server-side apply: no-op when present).
async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.meta_mut().name = Some(name.to_string());
    api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&ns))
        .await
        .map_err(|e| Error::kube(format!("creating namespace {name}"), e))?;
    Ok(())
}
