//! The agent's Prometheus metrics and its HTTP endpoint: `/metrics` (text
//! exposition), `/healthz` (the process is serving) and `/readyz` (the node
//! is synchronized with its source and the mesh).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

/// Every metric the agent exports.
#[derive(Default)]
pub struct Metrics {
    pub remote_clusters: Gauge,
    pub refused_clusters: Family<ClusterLabel, Gauge>,
    pub remote_nodes: Gauge,
    pub remote_endpoints: Gauge,
    pub invalid_records: Family<KindLabel, Counter>,
    pub etcd_connected: Gauge,
    pub etcd_bytes_written: Counter,
    pub mesh_updates: Counter,
    pub mesh_listings: Counter,
    pub local_endpoints: Gauge,
    pub pending_endpoints: Gauge,
    pub map_write_errors: Family<MapLabel, Counter>,
    pub services: Gauge,
    pub service_backends: Gauge,
    pub policies: Gauge,
    pub policies_invalid: Gauge,
    pub policy_entries: Gauge,
    pub ready: AtomicBool,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("fleetnet");
        registry.register(
            "mesh_remote_clusters",
            "Remote clusters in use",
            self.remote_clusters.clone(),
        );
        registry.register(
            "mesh_cluster_refused",
            "Clusters refused (1), e.g. for overlapping pod CIDRs",
            self.refused_clusters.clone(),
        );
        registry.register(
            "mesh_remote_nodes",
            "Nodes of other clusters and of this cluster's other nodes in use",
            self.remote_nodes.clone(),
        );
        registry.register(
            "mesh_remote_endpoints",
            "Endpoints published by other nodes in use",
            self.remote_endpoints.clone(),
        );
        registry.register(
            "mesh_invalid_records",
            "Records from etcd skipped as undecodable or invalid, by kind",
            self.invalid_records.clone(),
        );
        registry.register(
            "etcd_connected",
            "1 while the mesh watch is connected to etcd",
            self.etcd_connected.clone(),
        );
        registry.register(
            "etcd_bytes_written",
            "Key and value bytes this agent wrote to etcd",
            self.etcd_bytes_written.clone(),
        );
        registry.register(
            "mesh_updates",
            "Changes received from the mesh watch",
            self.mesh_updates.clone(),
        );
        registry.register(
            "mesh_listings",
            "Full listings of the mesh (start, compaction, reconnect)",
            self.mesh_listings.clone(),
        );
        registry.register(
            "endpoints_local",
            "Local pods attached to the datapath",
            self.local_endpoints.clone(),
        );
        registry.register(
            "endpoints_pending",
            "Local pods waiting for their network interface",
            self.pending_endpoints.clone(),
        );
        registry.register(
            "map_write_errors",
            "Failed writes to BPF maps, by map",
            self.map_write_errors.clone(),
        );
        registry.register(
            "services",
            "Service frontends in the datapath",
            self.services.clone(),
        );
        registry.register(
            "service_backends",
            "Distinct service backends in the datapath",
            self.service_backends.clone(),
        );
        registry.register(
            "policies",
            "NetworkPolicies in force on this node",
            self.policies.clone(),
        );
        registry.register(
            "policies_invalid",
            "NetworkPolicies that do not parse (their last valid version, if any, stays in force)",
            self.policies_invalid.clone(),
        );
        registry.register(
            "policy_entries",
            "Entries in the policy map",
            self.policy_entries.clone(),
        );
        registry
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry()).expect("writing to a String cannot fail");
        text
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until the
/// runtime stops.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    info!(%address, "serving metrics and health");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/metrics" => ("200 OK", metrics.render()),
                    "/healthz" => ("200 OK", "ok\n".to_string()),
                    "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                        ("200 OK", "ready\n".into())
                    }
                    "/readyz" => ("503 Service Unavailable", "not ready\n".into()),
                    _ => ("404 Not Found", "not found\n".into()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(error) = stream.write_all(response.as_bytes()).await {
                    warn!("metrics response: {error}");
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the README's table names is exported, and every
    /// exported metric is in the table.
    #[test]
    fn the_documented_metrics_are_the_exported_ones() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### Metrics")
            .nth(1)
            .and_then(|rest| rest.split("\n#").next())
            .expect("README has a Metrics section");
        let mut documented: Vec<String> = section
            .lines()
            .filter(|line| line.starts_with("| `fleetnet_"))
            .flat_map(|line| {
                let first_cell = line.split('|').nth(1).unwrap_or_default();
                first_cell
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|name| {
                        let name = name.split('{').next().unwrap_or(name);
                        name.strip_suffix("_total").unwrap_or(name).to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        // Families are rendered once they have a sample.
        let metrics = Metrics::default();
        let label = |value: &str| ClusterLabel {
            cluster: value.into(),
        };
        metrics.refused_clusters.get_or_create(&label("c9")).set(1);
        metrics
            .invalid_records
            .get_or_create(&KindLabel {
                kind: "node".into(),
            })
            .inc();
        metrics
            .map_write_errors
            .get_or_create(&MapLabel {
                map: "ipcache".into(),
            })
            .inc();
        let rendered = metrics.render();
        let mut exported: Vec<String> = rendered
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_string)
            .collect();
        documented.sort();
        exported.sort();
        assert_eq!(documented, exported);
    }
}
