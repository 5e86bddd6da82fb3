//! The controllers. Each module has `run(ctx, stop)`, which builds a kube-runtime `Controller`
//! and drives it until `stop` (shutdown or lost leadership), a `reconcile(obj, ctx) ->
//! Result<Action>` and an `error_policy`. [`run`] starts them all; add a new controller there.

pub mod installation;
pub mod ipam;
pub mod ippool;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::{Context, Error, Stop};

/// Runs every controller until `stop` completes.
pub async fn run(ctx: Arc<Context>, stop: Stop) {
    futures::join!(
        installation::run(ctx.clone(), stop.clone()),
        ipam::run(ctx.clone(), stop.clone()),
        ippool::run(ctx.clone(), stop.clone()),
    );
}

/// Every `K` in the cluster, watched the operator's way: retried at most every 5 s while the
/// API server is unreachable ([`trellis_api::watch_backoff::WatchBackoff`]), not kube's 30 s.
pub fn watch_all<K>(
    client: &kube::Client,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    use kube::runtime::WatchStreamExt;
    watcher(kube::Api::<K>::all(client.clone()), watcher::Config::default())
        .backoff(trellis_api::watch_backoff::WatchBackoff::default())
}

/// Consumes a controller's result stream: logs each outcome (the runtime already scheduled the
/// retry through `error_policy`).
pub async fn drive<K, S>(name: &'static str, results: S)
where
    K: kube::Resource + Debug,
    K::DynamicType: Debug + Eq + std::hash::Hash + Clone,
    S: Stream<Item = Result<(ObjectRef<K>, Action), controller::Error<Error, watcher::Error>>>,
{
    results
        .for_each(|result| async move {
            match result {
                Ok((obj, action)) => tracing::debug!(controller = name, object = %obj, ?action, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::warn!(controller = name, object = %obj, error = %e, "reconcile failed")
                }
                Err(e) => tracing::warn!(controller = name, error = %e, "controller"),
            }
        })
        .await;
    tracing::info!(controller = name, "controller stopped");
}

/// Times a reconcile and counts it (and its failure) in the metrics.
pub async fn measured<F>(name: &'static str, ctx: &Context, reconcile: F) -> Result<Action, Error>
where
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let start = Instant::now();
    let result = reconcile.await;
    ctx.metrics.reconciled(name, start.elapsed());
    if let Err(e) = &result {
        ctx.metrics.failed(name, e);
    }
    result
}

/// The retry every controller uses after a failed reconcile: at once for a write that lost an
/// optimistic-concurrency race (the object changed between read and write: read it again),
/// soon for other API errors, not at all for a replica that stopped leading (its controllers
/// are being stopped).
pub fn retry_after(error: &Error) -> Action {
    match error {
        Error::NotLeader => Action::await_change(),
        Error::Kube { source: kube::Error::Api(status), .. } if status.is_conflict() => {
            Action::requeue(Duration::from_millis(200))
        }
        _ => Action::requeue(Duration::from_secs(5)),
    }
}
