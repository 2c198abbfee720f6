//! The agent's HTTP endpoint, on `metrics.listen`:
//! - `/metrics`: OpenMetrics text exposition;
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 once the node is synchronized with its source and the
//!   mesh, else 503;
//! - `/status`: the [`StatusReport`] as JSON (`fleetnet status`);
//! - `/flows?since=N`: recent flows from number N on, as JSON
//!   (`fleetnet observe`).
//!
//! `/status` and `/flows` name pods: here they answer this host only (a
//! client on loopback, or on the address it connected to); the relay
//! reads them over the observe listener's mutual TLS
//! ([`super::observe_listener`]).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, RawQuery, Request, State, connect_info::Connected},
    http::{StatusCode, header::CONTENT_TYPE},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    serve::IncomingStream,
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
        .merge(observe_routes().layer(middleware::from_fn(this_host_only)))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!(%address, "serving metrics, health, status and flows");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<Connection>(),
        )
        .await
    });
    Ok(())
}

/// `/status` and `/flows`, on this listener and the relay's.
pub(super) fn observe_routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/status", get(status))
        .route("/flows", get(flows))
}

/// Both ends of an accepted connection.
#[derive(Debug, Clone, Copy)]
struct Connection {
    local: Option<SocketAddr>,
    peer: SocketAddr,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self {
            local: stream.io().local_addr().ok(),
            peer: *stream.remote_addr(),
        }
    }
}

impl Connection {
    /// The client runs on this host: on loopback, or connecting from the
    /// very address it connected to (`fleetnet status --server
    /// <node address>` on the node).
    fn is_this_host(&self) -> bool {
        self.peer.ip().is_loopback() || self.local.is_some_and(|local| local.ip() == self.peer.ip())
    }
}

async fn this_host_only(
    ConnectInfo(connection): ConnectInfo<Connection>,
    request: Request,
    next: Next,
) -> Response {
    if connection.is_this_host() {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        format!(
            "{} names pods and answers this node only; from elsewhere, ask the relay \
             (fleetnet observe --fleet, fleetnet status --fleet), which reads it over \
             observe.relay-listen with mutual TLS\n",
            request.uri().path()
        ),
    )
        .into_response()
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
