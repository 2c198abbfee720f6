//! The agent's Prometheus metrics: its own state (this module) and the
//! datapath's counters, read from the BPF maps on each scrape
//! ([`datapath`]). The agent's API ([`crate::api`]) serves them.

pub mod datapath;

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use self::datapath::DatapathCollector;

/// A remote cluster, named `target_cluster` as Cilium's clustermesh
/// metrics name it: a `cluster` label is what a fleet's scrape
/// configuration adds for the cluster an agent runs in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub target_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterKindLabel {
    pub target_cluster: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// Seconds as a float gauge.
pub type Seconds = Gauge<f64, AtomicU64>;

/// Every metric the agent exports about itself.
pub struct Metrics {
    pub remote_clusters: Gauge,
    pub refused_clusters: Family<ClusterLabel, Gauge>,
    pub cluster_native: Family<ClusterLabel, Gauge>,
    pub cluster_routing_mismatch: Family<ClusterLabel, Gauge>,
    pub cluster_cordoned: Family<ClusterLabel, Gauge>,
    pub remote_nodes: Gauge,
    pub remote_endpoints: Gauge,
    pub invalid_records: Family<KindLabel, Counter>,
    pub entries_rejected: Family<ClusterKindLabel, Counter>,
    pub cluster_connected: Family<ClusterLabel, Gauge>,
    pub cluster_nodes: Family<ClusterLabel, Gauge>,
    pub cluster_endpoints: Family<ClusterLabel, Gauge>,
    pub cluster_services: Family<ClusterLabel, Gauge>,
    pub cluster_last_update: Family<ClusterLabel, Seconds>,
    pub last_update: Seconds,
    pub sync_latency: Histogram,
    pub etcd_connected: Gauge,
    pub etcd_bytes_written: Counter,
    pub etcd_errors: Family<OperationLabel, Counter>,
    pub mesh_updates: Counter,
    pub mesh_listings: Counter,
    pub local_endpoints: Gauge,
    pub pending_endpoints: Gauge,
    pub path_mtu: Gauge,
    pub endpoints_over_path_mtu: Gauge,
    pub map_write_errors: Family<MapLabel, Counter>,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    pub services: Gauge,
    pub service_backends: Gauge,
    pub policies: Gauge,
    pub policies_invalid: Gauge,
    pub policy_entries: Gauge,
    /// Flow events read from the ring but over `observe.events-per-second`.
    pub events_rate_limited: Counter,
    /// The datapath's counters, once the datapath is loaded.
    pub datapath: OnceLock<Arc<DatapathCollector>>,
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            remote_clusters: Gauge::default(),
            refused_clusters: Family::default(),
            cluster_native: Family::default(),
            cluster_routing_mismatch: Family::default(),
            cluster_cordoned: Family::default(),
            remote_nodes: Gauge::default(),
            remote_endpoints: Gauge::default(),
            invalid_records: Family::default(),
            entries_rejected: Family::default(),
            cluster_connected: Family::default(),
            cluster_nodes: Family::default(),
            cluster_endpoints: Family::default(),
            cluster_services: Family::default(),
            cluster_last_update: Family::default(),
            last_update: Seconds::default(),
            // 100 us to about 6.5 s.
            sync_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-4, 2.0, 17),
            ),
            etcd_connected: Gauge::default(),
            etcd_bytes_written: Counter::default(),
            etcd_errors: Family::default(),
            mesh_updates: Counter::default(),
            mesh_listings: Counter::default(),
            local_endpoints: Gauge::default(),
            pending_endpoints: Gauge::default(),
            path_mtu: Gauge::default(),
            endpoints_over_path_mtu: Gauge::default(),
            map_write_errors: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            services: Gauge::default(),
            service_backends: Gauge::default(),
            policies: Gauge::default(),
            policies_invalid: Gauge::default(),
            policy_entries: Gauge::default(),
            events_rate_limited: Counter::default(),
            datapath: OnceLock::new(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("fleetnet");
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: crate::version().into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version of fleetnet this agent runs",
            build_info,
        );
        let mut gauge = |name: &str, help: &str, metric: &Gauge| {
            registry.register(name, help, metric.clone());
        };
        gauge(
            "mesh_remote_clusters",
            "Remote clusters in use",
            &self.remote_clusters,
        );
        gauge(
            "mesh_remote_nodes",
            "Nodes of other clusters and of this cluster's other nodes in use",
            &self.remote_nodes,
        );
        gauge(
            "mesh_remote_endpoints",
            "Endpoints published by other nodes in use",
            &self.remote_endpoints,
        );
        gauge(
            "etcd_connected",
            "1 while the mesh watch is connected to etcd",
            &self.etcd_connected,
        );
        gauge(
            "endpoints_local",
            "Local pods attached to the datapath",
            &self.local_endpoints,
        );
        gauge(
            "endpoints_pending",
            "Local pods waiting for their network interface",
            &self.pending_endpoints,
        );
        gauge(
            "path_mtu_bytes",
            "The largest packet a pod may send to another node (the underlay's MTU less the tunnel's overhead); 0 while unknown",
            &self.path_mtu,
        );
        gauge(
            "endpoints_over_path_mtu",
            "Local pods whose interface MTU is over the path MTU: their larger packets to other nodes are answered with ICMP fragmentation needed",
            &self.endpoints_over_path_mtu,
        );
        gauge(
            "services",
            "Service frontends in the datapath",
            &self.services,
        );
        gauge(
            "service_backends",
            "Distinct service backends in the datapath",
            &self.service_backends,
        );
        gauge(
            "policies",
            "NetworkPolicies in force on this node",
            &self.policies,
        );
        gauge(
            "policies_invalid",
            "NetworkPolicies that do not parse (their last valid version, if any, stays in force)",
            &self.policies_invalid,
        );
        gauge(
            "policy_entries",
            "Entries in the policy map",
            &self.policy_entries,
        );

        let mut clusters = |name: &str, help: &str, family: &Family<ClusterLabel, Gauge>| {
            registry.register(name, help, family.clone());
        };
        clusters(
            "mesh_cluster_refused",
            "Clusters refused (1), e.g. for overlapping pod CIDRs",
            &self.refused_clusters,
        );
        clusters(
            "mesh_cluster_native",
            "1 while a remote cluster's pods are routed natively (unencapsulated), 0 while tunnelled",
            &self.cluster_native,
        );
        clusters(
            "mesh_cluster_routing_mismatch",
            "1 while a remote cluster publishes another routing mode towards this cluster than this one towards it (both then tunnel)",
            &self.cluster_routing_mismatch,
        );
        clusters(
            "mesh_cluster_cordoned",
            "1 while a remote cluster is cordoned or draining (fleetnet cluster cordon/retire): its backends take new connections only when no other is left",
            &self.cluster_cordoned,
        );
        clusters(
            "mesh_cluster_connected",
            "1 while a remote cluster has at least one node publishing, else 0",
            &self.cluster_connected,
        );
        clusters(
            "mesh_cluster_nodes",
            "Nodes of each remote cluster in use",
            &self.cluster_nodes,
        );
        clusters(
            "mesh_cluster_endpoints",
            "Endpoints of each remote cluster in use",
            &self.cluster_endpoints,
        );
        clusters(
            "mesh_cluster_global_services",
            "Global services each remote cluster exports backends for",
            &self.cluster_services,
        );
        registry.register(
            "mesh_cluster_last_update_timestamp_seconds",
            "Unix time of the last change a remote cluster made in the mesh",
            self.cluster_last_update.clone(),
        );
        registry.register(
            "mesh_last_update_timestamp_seconds",
            "Unix time of the last change received from the mesh",
            self.last_update.clone(),
        );
        registry.register(
            "mesh_sync_latency_seconds",
            "Time from a batch of mesh changes arriving from etcd to the datapath being updated",
            self.sync_latency.clone(),
        );
        registry.register(
            "mesh_invalid_records",
            "Records from etcd skipped as undecodable or of an unknown version, by kind",
            self.invalid_records.clone(),
        );
        registry.register(
            "mesh_entries_rejected",
            "Records a cluster published claiming what is not its own (pod addresses outside its \
             pod CIDRs or its node's, identities outside its range), by cluster and kind",
            self.entries_rejected.clone(),
        );
        registry.register(
            "etcd_bytes_written",
            "Key and value bytes this agent wrote to etcd",
            self.etcd_bytes_written.clone(),
        );
        registry.register(
            "etcd_errors",
            "Failed etcd operations, by operation (watch, session, identity, registration)",
            self.etcd_errors.clone(),
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
            "map_write_errors",
            "Failed writes to BPF maps, by map",
            self.map_write_errors.clone(),
        );
        registry.register(
            "bpf_map_entries",
            "Entries in each BPF map",
            self.map_entries.clone(),
        );
        registry.register(
            "bpf_map_capacity",
            "Capacity of each BPF map (entries)",
            self.map_capacity.clone(),
        );
        if let Some(datapath) = self.datapath.get() {
            registry.register_collector(Box::new(datapath.clone()));
        }
        registry
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Brings the rejected-records counters up to `totals` (by cluster
    /// and kind, as counted by the mesh state).
    pub fn entries_rejected_up_to(&self, totals: &std::collections::BTreeMap<(String, &str), u64>) {
        for ((cluster, kind), total) in totals {
            let counter = self.entries_rejected.get_or_create(&ClusterKindLabel {
                target_cluster: cluster.clone(),
                kind: kind.to_string(),
            });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    pub fn etcd_error(&self, operation: &str) {
        self.etcd_errors
            .get_or_create(&OperationLabel {
                operation: operation.into(),
            })
            .inc();
    }

    /// Sets a map's fill level.
    pub fn map_fill(&self, map: &str, entries: u64, capacity: u64) {
        let label = MapLabel { map: map.into() };
        self.map_entries.get_or_create(&label).set(entries as i64);
        self.map_capacity.get_or_create(&label).set(capacity as i64);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry()).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the docs' table names is exported with the labels it
    /// gives, and every exported metric is in the table.
    #[test]
    fn the_documented_metrics_are_the_exported_ones() {
        // Families are rendered once they have a sample.
        let metrics = Metrics::default();
        let label = |value: &str| ClusterLabel {
            target_cluster: value.into(),
        };
        metrics.refused_clusters.get_or_create(&label("c9")).set(1);
        metrics.cluster_native.get_or_create(&label("c2")).set(1);
        metrics
            .cluster_routing_mismatch
            .get_or_create(&label("c3"))
            .set(1);
        metrics.cluster_cordoned.get_or_create(&label("c3")).set(1);
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
        metrics.etcd_error("watch");
        metrics.entries_rejected_up_to(&[(("c2".to_string(), "endpoint"), 2)].into());
        metrics.map_fill("policy", 1, 10);
        for family in [
            &metrics.cluster_connected,
            &metrics.cluster_nodes,
            &metrics.cluster_endpoints,
            &metrics.cluster_services,
        ] {
            family.get_or_create(&label("c2")).set(1);
        }
        metrics
            .cluster_last_update
            .get_or_create(&label("c2"))
            .set(1.0);
        let collector = datapath::DatapathCollector::new(
            Box::new(datapath::tests::snapshot()),
            metrics.events_rate_limited.clone(),
        );
        let _ = metrics.datapath.set(Arc::new(collector));
        let rendered = metrics.render();
        assert_eq!(
            fleetnet_doc_check::metrics_in("docs/metrics.md", "## The agent's metrics"),
            fleetnet_doc_check::exported(&rendered)
        );
        assert_eq!(
            fleetnet_doc_check::labels_in("docs/metrics.md", "## The agent's metrics"),
            fleetnet_doc_check::exported_labels(&rendered)
        );
        let build_info = format!("fleetnet_build_info{{version=\"{}\"}} 1", crate::version());
        assert!(rendered.contains(&build_info), "{rendered}");
    }
}
