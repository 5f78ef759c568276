//! The controller's HTTP endpoints: `/metrics` for Prometheus, `/healthz`
//! and `/readyz` for the kubelet's probes.
//!
//! - `GET /metrics`: [`Metrics::encode`], as OpenMetrics text.
//! - `GET /healthz`: 200 while the process's runtime answers at all. It
//!   deliberately checks nothing else: a liveness failure restarts the pod,
//!   and a restart cures neither an unreachable API server nor a broken feed.
//! - `GET /readyz`: 200 once [`Health::set_ready`] said so (the informer
//!   caches synced), else 503 with the reason in the body, so
//!   `kubectl describe pod` shows why the pod is not ready.
//!
//! The server speaks HTTP/1.1 only: probes and Prometheus need nothing more,
//! and leaving HTTP/2 out keeps the dependency tree small.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// The media type of [`Metrics::encode`]'s output. Prometheus asks for it in
/// its `Accept` header and parses it natively.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a shutdown waits for open connections to finish before dropping
/// them. Scrapes and probes take milliseconds; the bound is for a client that
/// opened a connection and never finished its request, which would otherwise
/// hold the shutdown (and so the pod's termination) indefinitely.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the process is not ready before anything said otherwise.
const NOT_READY_YET: &str = "caches not synced yet";

/// The readiness the `/readyz` probe reports. Cheap to clone (one `Arc`):
/// the controller keeps one clone to flip, the server another to read.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    ready: AtomicBool,
    /// Why not ready; only read while `ready` is false.
    reason: Mutex<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not ready, because the caches have not synced yet.
    pub fn new() -> Self {
        Health {
            inner: Arc::new(HealthInner {
                ready: AtomicBool::new(false),
                reason: Mutex::new(NOT_READY_YET.to_owned()),
            }),
        }
    }

    /// Marks the process ready (or not, with a generic reason). Call it with
    /// `true` once every informer cache has synced: a replica that answers
    /// before that would act on a partial view of the cluster.
    pub fn set_ready(&self, ready: bool) {
        if ready {
            self.inner.ready.store(true, Ordering::Release);
        } else {
            self.set_not_ready("not ready");
        }
    }

    /// Marks the process not ready, saying why (shown in the 503 body).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock_reason() = reason.into();
        self.inner.ready.store(false, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Why the process is not ready, or `None` when it is.
    pub fn reason(&self) -> Option<String> {
        if self.is_ready() {
            None
        } else {
            Some(self.lock_reason().clone())
        }
    }

    fn lock_reason(&self) -> std::sync::MutexGuard<'_, String> {
        // A panic while holding the lock cannot leave a String half-written
        // in a way that matters here; keep serving rather than propagating.
        self.inner
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// The routes, for serving them on a listener of one's own or merging them
/// into another router.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.reason() {
        None => "ok\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Binds `addr` and returns the address actually bound (the port is chosen
/// by the OS when `addr`'s port is 0) and the server, which runs when
/// awaited. Binding before running lets a caller fail fast on a taken port
/// and lets tests learn the port.
///
/// The server stops once `shutdown` completes: it stops accepting at once,
/// lets requests in flight finish for up to [`DRAIN_TIMEOUT`], then returns
/// `Ok(())`.
pub async fn bind(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(
    SocketAddr,
    impl Future<Output = io::Result<()>> + Send + 'static,
)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (stopping_tx, stopping_rx) = futures::channel::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        // The receiver is gone only if the server already finished.
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(signal)
        .into_future();
    let run = async move {
        let drain_deadline = async move {
            match stopping_rx.await {
                Ok(()) => tokio::time::sleep(DRAIN_TIMEOUT).await,
                // The signal was dropped unsent: the server is returning.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = server => result,
            () = drain_deadline => {
                // Dropping the server closes the listener; the stuck
                // connections' tasks end with the process.
                tracing::warn!(
                    timeout = ?DRAIN_TIMEOUT,
                    "metrics server: connections still open at shutdown, dropping them"
                );
                Ok(())
            }
        }
    };
    Ok((local, run))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`
/// completes; see [`bind`] to learn the bound port first.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (local, server) = bind(addr, metrics, health, shutdown).await?;
    tracing::info!(address = %local, "serving /metrics, /healthz and /readyz");
    server.await
}
