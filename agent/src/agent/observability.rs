//! What the agent shows of itself, beyond the metrics it updates as it
//! goes: the datapath's counters (a collector over the pinned maps), flow
//! events read off the ring and named, the status report, per-cluster mesh
//! health and map fill levels (refreshed once a second).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dataplane_common::{Direction, DropReason, FlowEvent, Verdict};
use tokio::sync::mpsc;
use tracing::warn;

use fleetnet_store::time::{unix_now, unix_seconds};

use crate::{
    api::{
        server::Shared,
        status::{ClusterStatus, FleetStatus, MapFill, RefusedCluster, StatusReport, Traffic},
    },
    config::AgentConfig,
    datapath::{CounterMaps, EventReader, MapSizes, sweep_conntrack},
    mesh::{session::Session, state::MeshState},
    metrics::{
        ClusterLabel, Metrics, OperationLabel,
        datapath::{self as datapath_metrics, DatapathCollector, Names, protocol_label},
    },
    observe::{
        flows::{DROPPED, FORWARDED, FlowEnd, FlowRecord},
        reader,
    },
    source::state::NodePod,
};

/// How often the counter maps are counted; conntrack (up to hundreds of
/// thousands of entries, two syscalls each) is swept of expired entries
/// and counted every `CONNTRACK_EVERY` rounds.
const COUNT_EVERY: Duration = Duration::from_secs(5);
const CONNTRACK_EVERY: u32 = 2;

pub(super) struct Observability {
    pub shared: Arc<Shared>,
    names: Arc<RwLock<Names>>,
    /// Unix time minus the monotonic clock the datapath stamps events with.
    clock_offset_ns: i128,
    /// Entries of the maps counted in the background, by map.
    counted: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// Live load-balanced connections by backend cluster id, and when they
    /// were counted (unix seconds), from the last conntrack sweep.
    balanced: Arc<Mutex<Balanced>>,
    sizes: MapSizes,
    session_errors_seen: u64,
    /// The flow event reader's limit, which a fleet revision may change.
    events_per_second: Arc<AtomicU32>,
    /// This node's pods by address: namespace, name, identity (for flows).
    pod_names: BTreeMap<Ipv4Addr, (String, String, Option<u32>)>,
    /// The datapath's counters, read for the status's traffic.
    counters: Option<CounterMaps>,
}

/// What the status report and the per-second metrics are made of.
pub(super) struct Snapshot<'a> {
    pub(super) config: &'a AgentConfig,
    pub(super) ready: bool,
    pub(super) mesh: &'a MeshState,
    /// Service ids in the datapath, by `namespace/name`.
    pub(super) service_names: &'a BTreeMap<u32, String>,
    pub(super) session: Option<&'a Session>,
    pub(super) programmed: Programmed,
    /// Pods attached to the datapath.
    pub(super) pods: usize,
    /// NetworkPolicies in force.
    pub(super) policies: usize,
    pub(super) fleet: FleetStatus,
}

/// Entries of the maps the agent programs.
pub(super) struct Programmed {
    pub(super) ipcache: usize,
    pub(super) endpoints: usize,
    pub(super) services: usize,
    pub(super) backends: usize,
    pub(super) policy: usize,
}

impl Observability {
    /// The last conntrack sweep's live load-balanced connections, by
    /// backend cluster name (the names metrics use, refreshed each second;
    /// unknown ids left out), and when they were counted.
    pub(super) fn balanced_to(&self) -> (BTreeMap<String, u64>, f64) {
        let (by_id, counted) = self
            .balanced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        let by_name = by_id
            .into_iter()
            .filter_map(|(id, connections)| Some((names.clusters.get(&id)?.clone(), connections)))
            .collect();
        (by_name, counted)
    }

    pub(super) fn set_events_per_second(&self, per_second: u32) {
        self.events_per_second.store(per_second, Ordering::Relaxed);
    }

    /// Remembers this node's pods, to name flow ends with.
    pub(super) fn set_pods(
        &mut self,
        pods: &BTreeMap<Ipv4Addr, NodePod>,
        identity_of: impl Fn(&NodePod) -> Option<u32>,
    ) {
        self.pod_names = pods
            .iter()
            .map(|(ip, pod)| {
                let name = (pod.namespace.clone(), pod.name.clone(), identity_of(pod));
                (*ip, name)
            })
            .collect();
    }
}

/// Starts the counters collector, the flow event reader and the map
/// counter over the maps pinned in `pin_dir`; returns the batches of flow
/// events to name.
pub(super) fn start(
    config: &AgentConfig,
    pin_dir: &Path,
    sizes: MapSizes,
    shared: Arc<Shared>,
) -> (Observability, mpsc::Receiver<Vec<FlowEvent>>) {
    let metrics = &shared.metrics;
    let names = match CounterMaps::open_pinned(pin_dir) {
        Ok(counters) => {
            let collector = DatapathCollector::new(
                Box::new(Mutex::new(counters)),
                metrics.events_rate_limited.clone(),
            );
            let names = collector.names.clone();
            let _ = metrics.datapath.set(Arc::new(collector));
            names
        }
        Err(error) => {
            warn!("cannot open the datapath counters ({error}); /metrics shows none");
            Arc::default()
        }
    };
    let (flows_tx, flows_rx) = mpsc::channel(64);
    let events_per_second = Arc::new(AtomicU32::new(config.observe.events_per_second));
    match EventReader::open_pinned(pin_dir) {
        Ok(events) => {
            tokio::spawn(reader::run(
                events,
                events_per_second.clone(),
                flows_tx,
                metrics.events_rate_limited.clone(),
            ));
        }
        Err(error) => warn!("cannot open the flow event ring ({error}); no flow events"),
    }
    let counted = Arc::new(Mutex::new(BTreeMap::new()));
    let balanced = Arc::new(Mutex::new(Balanced::default()));
    tokio::spawn(count_maps(
        pin_dir.to_path_buf(),
        counted.clone(),
        balanced.clone(),
    ));
    let observability = Observability {
        shared,
        names,
        clock_offset_ns: clock_offset_ns(),
        counted,
        balanced,
        sizes,
        session_errors_seen: 0,
        events_per_second,
        pod_names: BTreeMap::new(),
        counters: CounterMaps::open_pinned(pin_dir).ok(),
    };
    (observability, flows_rx)
}

/// Live load-balanced connections by backend cluster id, counted at unix
/// seconds `.1` (0: not yet).
pub(super) type Balanced = (BTreeMap<u16, u64>, f64);

/// Counts, now and then, the entries of the maps the datapath writes.
async fn count_maps(
    pin_dir: std::path::PathBuf,
    counted: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    balanced: Arc<Mutex<Balanced>>,
) {
    let Ok(counters) = CounterMaps::open_pinned(&pin_dir) else {
        return;
    };
    for round in 0u32.. {
        let mut counts = counted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if round % CONNTRACK_EVERY == 0
            && let Ok(swept) = sweep_conntrack(&pin_dir, crate::datapath::clock::monotonic_ns())
        {
            counts.insert("conntrack", swept.live as u64);
            *balanced.lock().unwrap_or_else(|p| p.into_inner()) =
                (swept.balanced_to, fleetnet_store::time::unix_now());
        }
        if let Ok(flows) = counters.flows() {
            counts.insert("metrics", flows.len() as u64);
        }
        if let Ok(selections) = counters.selections() {
            counts.insert("selections", selections.len() as u64);
        }
        *counted.lock().unwrap_or_else(|p| p.into_inner()) = counts;
        tokio::time::sleep(COUNT_EVERY).await;
    }
}

/// Unix time minus CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads), in ns.
fn clock_offset_ns() -> i128 {
    let monotonic = i128::from(crate::datapath::clock::monotonic_ns());
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    unix - monotonic
}

impl Observability {
    /// Names the ends of flow events and keeps them for `/flows`.
    pub(super) fn record_flows(
        &self,
        events: Vec<FlowEvent>,
        mesh: &MeshState,
        cluster: &str,
        node: &str,
    ) {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        let records: Vec<FlowRecord> = events
            .iter()
            .map(|event| self.flow_record(event, &names, mesh, cluster, node))
            .collect();
        drop(names);
        let mut store = self.shared.flows.lock().unwrap_or_else(|p| p.into_inner());
        for record in records {
            store.push(record);
        }
    }

    fn flow_record(
        &self,
        event: &FlowEvent,
        names: &Names,
        mesh: &MeshState,
        cluster: &str,
        node: &str,
    ) -> FlowRecord {
        let (verdict, reason) = match (
            Verdict::from_code(event.reason),
            DropReason::from_code(event.reason),
        ) {
            (Some(verdict), _) => (FORWARDED, verdict.label()),
            (_, Some(reason)) => (DROPPED, reason.label()),
            _ => ("UNKNOWN", "unknown"),
        };
        let time = i128::from(event.timestamp) + self.clock_offset_ns;
        let end = |ip, port, identity, in_cluster| {
            let in_cluster = names.cluster(in_cluster);
            self.flow_end(
                ip,
                port,
                identity,
                in_cluster,
                event.protocol,
                mesh,
                cluster,
            )
        };
        FlowRecord {
            seq: 0,
            time_ns: u64::try_from(time).unwrap_or(0),
            node: node.to_string(),
            verdict: verdict.into(),
            reason: reason.into(),
            direction: Direction::from_code(event.direction)
                .map_or("unknown", Direction::label)
                .into(),
            protocol: protocol_label(event.protocol),
            source: end(
                event.src,
                event.src_port,
                event.src_identity,
                event.src_cluster,
            ),
            destination: end(
                event.dst,
                event.dst_port,
                event.dst_identity,
                event.dst_cluster,
            ),
        }
    }

    /// One end of a flow: a pod of this node (of `local_cluster`), a pod
    /// another node published, or just an address in `cluster`.
    #[expect(
        clippy::too_many_arguments,
        reason = "an end is its five fields and the two places names come from"
    )]
    fn flow_end(
        &self,
        ip: [u8; 4],
        port: u16,
        identity: u32,
        cluster: String,
        protocol: u8,
        mesh: &MeshState,
        local_cluster: &str,
    ) -> FlowEnd {
        let ip = Ipv4Addr::from(ip);
        let port = matches!(protocol, 6 | 17 | 132).then(|| u16::from_be(port));
        let mut end = FlowEnd {
            ip: (!ip.is_unspecified()).then_some(ip),
            port,
            identity,
            cluster,
            namespace: None,
            pod: None,
        };
        if let Some((namespace, pod, local_identity)) = self.pod_names.get(&ip) {
            end.cluster = local_cluster.to_string();
            end.namespace = Some(namespace.clone());
            end.pod = Some(pod.clone());
            if end.identity == 0 {
                end.identity = local_identity.unwrap_or(0);
            }
        } else if let Some((cluster, record)) = mesh.endpoint(ip) {
            end.cluster = cluster.to_string();
            end.namespace = Some(record.namespace.clone());
            end.pod = Some(record.pod.clone());
            if end.identity == 0 {
                end.identity = record.identity;
            }
        }
        end
    }

    /// Once a second: per-cluster mesh health, map fill levels, the names
    /// the counters are shown with, etcd session errors, and the status.
    pub(super) fn refresh(&mut self, snapshot: Snapshot<'_>, metrics: &Metrics) {
        let config = snapshot.config;
        let stats = snapshot.mesh.cluster_stats();
        for family in [
            &metrics.cluster_connected,
            &metrics.cluster_nodes,
            &metrics.cluster_endpoints,
            &metrics.cluster_services,
            &metrics.cluster_native,
            &metrics.cluster_routing_mismatch,
            &metrics.cluster_cordoned,
        ] {
            family.clear();
        }
        metrics.cluster_last_update.clear();
        let local = &config.cluster.name;
        let mut clusters = Vec::new();
        for (name, stats) in &stats {
            let is_local = name == local;
            let connected = is_local || stats.nodes > 0;
            if !is_local {
                let label = ClusterLabel {
                    target_cluster: name.clone(),
                };
                metrics
                    .cluster_connected
                    .get_or_create(&label)
                    .set(i64::from(connected));
                metrics
                    .cluster_nodes
                    .get_or_create(&label)
                    .set(stats.nodes as i64);
                metrics
                    .cluster_endpoints
                    .get_or_create(&label)
                    .set(stats.endpoints as i64);
                metrics
                    .cluster_services
                    .get_or_create(&label)
                    .set(stats.services as i64);
                metrics
                    .cluster_native
                    .get_or_create(&label)
                    .set(i64::from(stats.route.is_native()));
                metrics
                    .cluster_routing_mismatch
                    .get_or_create(&label)
                    .set(i64::from(stats.route.mismatch.is_some()));
                metrics
                    .cluster_cordoned
                    .get_or_create(&label)
                    .set(i64::from(
                        stats.member.is_some_and(|state| state.is_cordoned()),
                    ));
                if let Some(time) = stats.last_change {
                    metrics
                        .cluster_last_update
                        .get_or_create(&label)
                        .set(unix_seconds(time));
                }
            }
            clusters.push(ClusterStatus {
                name: name.clone(),
                id: stats.id,
                local: is_local,
                connected,
                nodes: stats.nodes as u64,
                endpoints: stats.endpoints as u64,
                global_services: stats.services as u64,
                last_update_unix: stats.last_change.map(unix_seconds),
                last_update_age_seconds: None,
                routing: stats.route.mode.label().into(),
                routing_mismatch: stats.route.mismatch.map(|(ours, theirs)| {
                    format!(
                        "this cluster routes {} towards it, it routes {} back",
                        ours.label(),
                        theirs.label()
                    )
                }),
                member: stats.member.map(|state| state.label().to_string()),
            });
        }

        {
            let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
            names.clusters = snapshot
                .mesh
                .accepted()
                .map(|(name, id)| (id, name.to_string()))
                .collect();
            names.services = snapshot.service_names.clone();
        }

        if let Some(session) = snapshot.session {
            let errors = session.errors();
            let new = errors.saturating_sub(self.session_errors_seen);
            if new > 0 {
                metrics
                    .etcd_errors
                    .get_or_create(&OperationLabel {
                        operation: "session".into(),
                    })
                    .inc_by(new);
            }
            self.session_errors_seen = errors;
        }

        let sizes = self.sizes;
        let counted = self
            .counted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let programmed = &snapshot.programmed;
        let mut maps = vec![
            ("ipcache", programmed.ipcache as u64, sizes.ipcache),
            ("endpoints", programmed.endpoints as u64, sizes.endpoints),
            ("services", programmed.services as u64, sizes.services),
            ("backends", programmed.backends as u64, sizes.backends),
            ("policy", programmed.policy as u64, sizes.policy),
        ];
        for (name, capacity) in [
            ("conntrack", sizes.conntrack),
            ("metrics", sizes.metrics),
            ("selections", sizes.metrics),
        ] {
            if let Some(entries) = counted.get(name) {
                maps.push((name, *entries, capacity));
            }
        }
        for (name, entries, capacity) in &maps {
            metrics.map_fill(name, *entries, u64::from(*capacity));
        }

        let traffic = self.traffic();
        let report = StatusReport {
            version: crate::version().into(),
            node: config.node.name.clone(),
            cluster: local.clone(),
            cluster_id: config.cluster.id,
            ready: snapshot.ready,
            etcd_connected: metrics.etcd_connected.get() == 1,
            pods: snapshot.pods as u64,
            pods_pending: metrics.pending_endpoints.get() as u64,
            policies: snapshot.policies as u64,
            services: programmed.services as u64,
            clusters,
            refused: refused_clusters(snapshot.mesh.refused()),
            maps: maps
                .into_iter()
                .map(|(name, entries, capacity)| MapFill {
                    name: name.into(),
                    entries,
                    capacity: u64::from(capacity),
                })
                .collect(),
            fleet: snapshot.fleet,
            traffic_read_unix: traffic.is_some().then(unix_now),
            traffic: traffic.unwrap_or_default(),
        };
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }

    /// Packets between clusters so far; none when the counters cannot be
    /// read (the scrape says so too).
    fn traffic(&self) -> Option<Vec<Traffic>> {
        let flows = self.counters.as_ref()?.flows().ok()?;
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        Some(datapath_metrics::traffic(&flows, &names))
    }

    /// The clusters this agent refuses, with why, written to `/status` and
    /// `/metrics` together after every batch of mesh events: the two never
    /// disagree, not even until the next per-second refresh.
    pub(super) fn set_refused(&self, refused: &BTreeMap<String, String>, metrics: &Metrics) {
        let listed = refused_clusters(refused);
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refused = listed;
        metrics.refused_clusters.clear();
        for cluster in refused.keys() {
            metrics
                .refused_clusters
                .get_or_create(&ClusterLabel {
                    target_cluster: cluster.clone(),
                })
                .set(1);
        }
    }
}

/// The status report's list of refused clusters.
fn refused_clusters(refused: &BTreeMap<String, String>) -> Vec<RefusedCluster> {
    refused
        .iter()
        .map(|(name, reason)| RefusedCluster {
            name: name.clone(),
            reason: reason.clone(),
        })
        .collect()
}

/// Marks the time of the latest mesh change.
pub(super) fn mesh_changed(metrics: &Metrics) {
    metrics.last_update.set(unix_now());
}
