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

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

use super::Metrics;
use crate::{observe::flows::FlowStore, status::StatusReport};

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

pub const TEXT: &str = "text/plain; charset=utf-8";
/// What prometheus-client writes: OpenMetrics text, which Prometheus
/// parses as such when told so.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const JSON: &str = "application/json";

/// An answer: status line, content type, body.
pub type Response = (&'static str, &'static str, String);

/// Answers a request target (path and query).
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// Serves the agent's endpoints on `address` until the runtime stops.
pub async fn serve(address: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    info!(%address, "serving metrics, health, status and flows");
    serve_with(
        address,
        Arc::new(move |target: &str| respond(&shared, target)),
    )
    .await
}

/// Serves `handler` on `address` until the runtime stops.
pub async fn serve_with(address: SocketAddr, handler: Handler) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let request = read_head(&mut stream).await;
                let line = String::from_utf8_lossy(&request);
                let target = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, content_type, body) = handler(target);
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(error) = stream.write_all(response.as_bytes()).await {
                    warn!("HTTP response: {error}");
                }
            });
        }
    });
    Ok(())
}

/// The request's head (through the blank line; at most 8 KiB), read
/// whole: closing with unread bytes would reset the connection.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    head
}

fn respond(shared: &Shared, target: &str) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let ready = shared.metrics.is_ready();
    match path {
        "/metrics" => ("200 OK", OPENMETRICS, shared.metrics.render()),
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if ready => ("200 OK", TEXT, "ready\n".into()),
        "/readyz" => ("503 Service Unavailable", TEXT, "not ready\n".into()),
        "/status" => {
            let report = lock(&shared.status).clone().aged(crate::clock::unix_now());
            ("200 OK", JSON, to_json(&report))
        }
        "/flows" => {
            let since = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("since="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let page = lock(&shared.flows).since(since);
            ("200 OK", JSON, to_json(&page))
        }
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("status and flows always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client, observe::flows::FlowRecord};

    #[tokio::test]
    async fn status_and_a_full_flow_store_reach_the_client() {
        let shared = Arc::new(Shared::new(Arc::new(Metrics::default()), 4096));
        for i in 0..5000 {
            lock(&shared.flows).push(FlowRecord {
                reason: format!("reason {i}"),
                ..FlowRecord::default()
            });
        }
        lock(&shared.status).node = "n1".into();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        serve(address, shared).await.unwrap();
        let (status, page) = tokio::task::spawn_blocking(move || {
            (client::status(address), client::flows(address, 0))
        })
        .await
        .unwrap();
        assert_eq!(status.unwrap().node, "n1");
        let page = page.unwrap();
        assert_eq!(page.flows.len(), 4096);
        assert_eq!(page.next, 5001);
        assert_eq!(page.flows[0].seq, 905);
    }
}
