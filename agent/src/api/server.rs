//! The agent's HTTP endpoint, on `metrics.listen`:
//! - `/metrics`: OpenMetrics text exposition;
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 once the node is synchronized with its source and the
//!   mesh, else 503;
//! - `/status`: the [`StatusReport`] as JSON (`fleetnet status`);
//! - `/flows?since=N`: recent flows from number N on, as JSON
//!   (`fleetnet observe`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{RawQuery, State},
    http::{StatusCode, header::CONTENT_TYPE},
    response::IntoResponse,
    routing::get,
};
use tracing::info;

use crate::{
    api::status::StatusReport,
    metrics::Metrics,
    observe::flows::{FlowPage, FlowStore},
};

/// What the endpoint serves, kept current by the agent.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub status: Mutex<StatusReport>,
    pub flows: Mutex<FlowStore>,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>, flows_kept: usize) -> Self {
        Self {
            metrics,
            status: Mutex::default(),
            flows: Mutex::new(FlowStore::new(flows_kept)),
        }
    }
}

/// What prometheus-client writes: OpenMetrics text, which Prometheus
/// parses as such when told so.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the agent's endpoints on `address` until the runtime stops.
pub async fn serve(address: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/flows", get(flows))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!(%address, "serving metrics, health, status and flows");
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, OPENMETRICS)], shared.metrics.render())
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusReport> {
    Json(
        lock(&shared.status)
            .clone()
            .aged(fleetnet_store::time::unix_now()),
    )
}

/// `?since=N`; anything else means from the start of what is kept.
async fn flows(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Json<FlowPage> {
    let since = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("since="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Json(lock(&shared.flows).since(since))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
