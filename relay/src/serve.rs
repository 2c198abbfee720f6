//! The relay's HTTP endpoint: `/status` (every node, [`FleetStatus`]),
//! `/flows?since=N` (the merged stream, as an agent's `/flows`),
//! `/healthz`.
//!
//! [`FleetStatus`]: crate::view::FleetStatus

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde::Deserialize;
use tokio::net::TcpListener;

use fleetnet_agent::observe::flows::FlowPage;

use crate::{
    poll::lock,
    view::{FleetStatus, View},
};

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

/// Serves `view` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, view: Arc<Mutex<View>>) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .route("/flows", get(flows))
        .with_state(view);
    axum::serve(listener, router).await
}

async fn status(State(view): State<Arc<Mutex<View>>>) -> Json<FleetStatus> {
    Json(lock(&view).status())
}

async fn flows(State(view): State<Arc<Mutex<View>>>, Query(since): Query<Since>) -> Json<FlowPage> {
    Json(lock(&view).flows_since(since.since))
}

/// Binds `address`, in one sentence when it cannot.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on {address}: {error}"))
}
