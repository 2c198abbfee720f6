//! The relay's HTTP endpoint: `/status` (every node, [`FleetStatus`]),
//! `/flows?since=N[&last=M]` (the merged stream, as an agent's `/flows`;
//! at most its newest M), `/map`
//! (clusters and the traffic between them), `/rollouts` (the fleet's
//! runs, newest first), `/healthz`, and the web UI at `/`, whose files
//! are built into the binary: it loads nothing from anywhere else.
//!
//! [`FleetStatus`]: crate::view::FleetStatus

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::header::CONTENT_TYPE,
    response::Html,
    routing::get,
};
use fleetnet_fleet::model::Run;
use serde::Deserialize;
use tokio::net::TcpListener;

use fleetnet_agent::observe::flows::FlowPage;

use crate::{
    map::FleetMap,
    poll::lock,
    view::{FleetStatus, View},
};

/// `/flows?since=N&last=M`: flows numbered N and later, at most the
/// newest M of them.
#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    last: Option<usize>,
}

/// Serves `view` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, view: Arc<Mutex<View>>) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .route("/flows", get(flows))
        .route("/map", get(map))
        .route("/rollouts", get(rollouts))
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/ui/app.js",
            get(|| async { ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], APP) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        .with_state(view);
    axum::serve(listener, router).await
}

const INDEX: &str = include_str!("../ui/index.html");
const APP: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

async fn map(State(view): State<Arc<Mutex<View>>>) -> Json<FleetMap> {
    Json(lock(&view).map())
}

async fn rollouts(State(view): State<Arc<Mutex<View>>>) -> Json<Vec<Run>> {
    Json(lock(&view).runs().to_vec())
}

async fn status(State(view): State<Arc<Mutex<View>>>) -> Json<FleetStatus> {
    Json(lock(&view).status())
}

async fn flows(State(view): State<Arc<Mutex<View>>>, Query(since): Query<Since>) -> Json<FlowPage> {
    let view = lock(&view);
    Json(match since.last {
        Some(most) => view.last_flows_since(since.since, most),
        None => view.flows_since(since.since),
    })
}

/// Binds `address`, in one sentence when it cannot.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on {address}: {error}"))
}
