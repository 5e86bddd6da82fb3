//! /healthz (the process serves), /readyz (connected, namespace in place, election joined)
//! and /metrics, on `--health-addr`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::{Error, Result, Stop};

/// Handle on the running health server.
#[derive(Clone)]
pub struct Health {
    state: Arc<Shared>,
    /// The address actually bound (differs from the flag with port 0).
    pub addr: SocketAddr,
}

struct Shared {
    ready: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::Relaxed);
    }
}

/// Binds `addr` (an error here is reported before anything else starts) and serves until `stop`.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, stop: Stop) -> Result<Health> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Health { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Health { addr, source })?;
    let state = Arc::new(Shared { ready: AtomicBool::new(false), metrics });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(addr = %bound, error = %e, "health server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz /readyz /metrics");
    Ok(Health { state, addr: bound })
}

async fn readyz(State(state): State<Arc<Shared>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(state): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}
