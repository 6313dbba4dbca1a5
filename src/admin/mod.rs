//! The admin HTTP port: `/healthz` (the process is alive and its loop turns),
//! `/readyz` (every assigned shard restored, producer usable) and `/metrics`
//! (Prometheus), and the admin API under `/api/v1` ([`api`]). It serves on a
//! thread of its own and only reads shared state.

pub mod act;
pub mod api;
mod audit;
mod console;
mod deploy;
mod insight;
pub mod members;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::{Health, Metrics, metrics};

/// The admin port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin port {addr}: {source} (set admin.listen to a free address, or admin.enabled = false)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin port: {0}")]
    Start(std::io::Error),
}

/// What `/metrics` serves: a registry as OpenMetrics text (baton's, or the
/// HTTP connector's).
pub trait MetricsText: Send + Sync + 'static {
    fn encode(&self) -> String;
}

impl MetricsText for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<dyn MetricsText>,
    health: Arc<Health>,
    stall_after: Duration,
}

/// A running admin server; it stops when dropped.
pub struct Admin {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Admin {
    /// The address it listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving on `listen`. Binding happens before it returns, so a port
/// in use is reported here.
pub fn serve(
    listen: SocketAddr,
    metrics: Arc<dyn MetricsText>,
    health: Arc<Health>,
    stall_after: Duration,
    api: Option<api::Api>,
) -> Result<Admin, AdminError> {
    serve_on(bind(listen)?, metrics, health, stall_after, api)
}

/// Binds the admin port, so that a process can hold it (and report it in
/// use) before it does the slower work of starting up.
pub fn bind(listen: SocketAddr) -> Result<std::net::TcpListener, AdminError> {
    std::net::TcpListener::bind(listen).map_err(|source| AdminError::Bind {
        addr: listen,
        source,
    })
}

/// Starts serving on a port [`bind`] bound.
pub fn serve_on(
    listener: std::net::TcpListener,
    metrics: Arc<dyn MetricsText>,
    health: Arc<Health>,
    stall_after: Duration,
    api: Option<api::Api>,
) -> Result<Admin, AdminError> {
    listener.set_nonblocking(true).map_err(AdminError::Start)?;
    let addr = listener.local_addr().map_err(AdminError::Start)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Start)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut app = router(Shared {
        metrics,
        health,
        stall_after,
    });
    let with_api = api.is_some();
    if let Some(api) = api {
        app = app.merge(api::routes(api)).merge(console::routes());
    }
    let thread = std::thread::Builder::new()
        .name("baton-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin port cannot serve");
                        return;
                    }
                };
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "admin port stopped");
                }
            });
        })
        .map_err(AdminError::Start)?;
    if with_api {
        tracing::info!(%addr, "admin port: /healthz /readyz /metrics /api/v1, console at /");
    } else {
        tracing::info!(%addr, "admin port: /healthz /readyz /metrics");
    }
    Ok(Admin {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(shared)
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    let since = s.health.since_beat();
    if since > s.stall_after {
        let body = format!(
            "stalled: the processing loop has not turned for {}s\n",
            since.as_secs()
        );
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, "ok\n".to_string())
    }
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let r = s.health.readiness();
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::to_value(&r).unwrap_or_default();
    body["ready"] = r.ready().into();
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        s.metrics.encode(),
    )
}

/// Asks `url` once (GET) and returns its status when it is 2xx, the reason
/// otherwise: `baton probe`, the health check of a container image that has
/// no curl.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(mut r) => {
            let body = r.body_mut().read_to_string().unwrap_or_default();
            Err(format!("answered {}: {}", r.status(), body.trim()))
        }
        Err(e) => Err(format!("no answer: {e}")),
    }
}
