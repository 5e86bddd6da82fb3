//! `/healthz`, `/readyz` and `/metrics` over HTTP/1.1 (hyper, already in the tree via kube).
//!
//! `/healthz` answers while the process serves requests; `/readyz` is 200 only while the last
//! pass left the data plane and the CNI conflist in place (kubelet then marks the pod ready);
//! `/metrics` is Prometheus' text format.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (health address): {source}")]
pub struct HealthError {
    addr: SocketAddr,
    source: std::io::Error,
}

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if metrics.ready() => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the data plane or the CNI conflist is not in place yet\n".to_string(),
        ),
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /healthz, /readyz or /metrics\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds `addr` now (so a taken port fails the start with a clear error) and serves in the
/// background.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, HealthError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| HealthError { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "health server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = respond(&metrics, request.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "health server: connection ended with an error");
                }
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_the_last_pass() {
        let m = Metrics::default();
        assert_eq!(respond(&m, "/healthz").status(), StatusCode::OK);
        assert_eq!(respond(&m, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        m.record_pass("start", 1, 0, std::time::Duration::ZERO, true);
        assert_eq!(respond(&m, "/readyz").status(), StatusCode::OK);
        assert_eq!(respond(&m, "/nope").status(), StatusCode::NOT_FOUND);
    }
}
