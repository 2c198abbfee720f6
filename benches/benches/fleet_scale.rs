//! A mesh of thousands of clusters: a simulated fleet written into the
//! real etcd by lightweight publishers, and a few real agents (the fleet
//! in a box, `mesh.export: annotated`) reaching etcd through an `etcd
//! grpc-proxy`, as the manifests deploy them.
//!
//! Every simulated cluster publishes what its agents would: registration
//! and id claim, leader key, nodes, endpoints (those of its exported
//! namespace in the shared keyspace, the rest among its local keys),
//! identities with their index and per-node references, and a global
//! Service's backends; everything a node writes lives under a lease (one
//! per cluster, an hour long, so no keepalives run during the benchmark).
//!
//! Measured:
//! - etcd: the keys written, its database size and resident set;
//! - the real agents: resident set and ipcache entries, time from start
//!   to ready and to a complete ipcache; memory per remote node (with its
//!   cluster's share) and per exported endpoint, from the resident set
//!   before and after each part of the fleet arrives;
//! - endpoint changes (exported pods added, then removed, one every 20 ms
//!   in clusters spread over the fleet): time from the write to every
//!   real agent's ipcache holding the change, p50 and p99;
//! - watchers held by etcd itself for lightweight members (the agent's
//!   mesh watcher) connected directly and through the proxy.
//!
//! Full: 4,096 clusters x 8 nodes x 30 pods, 20 namespaces per cluster
//! of which 1 (5%) is exported, 4 real agents. Quick: 64 clusters x 2
//! nodes, 2 real agents.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::mpsc as sync_mpsc,
    time::{Duration, Instant},
};

use dataplane_common::identity;
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use fleetnet_agent::{
    datapath::DatapathMaps,
    mesh::{
        identity::labels_hash,
        publish,
        watcher::{self, MeshEvent},
    },
    source::state::{NodeInfo, NodePod},
};
use fleetnet_benches::{self as bench, Figure};
use fleetnet_policy::identity::{CLUSTER_LABEL, NAMESPACE_LABEL};
use fleetnet_store::{
    self as kv, keys,
    records::{BackendRecord, ClusterRecord, EndpointRecord, IdentityRecord, Record, VERSION},
};
use fleetnet_testing::{
    etcd_proxy::GrpcProxy,
    fleet_in_a_box::{ETCD_IP, FleetInABox, FleetSpec},
    http::{http_get, metric_value},
};
use tokio::sync::mpsc;

const GROUP: &str =
    "Fleet scale (simulated clusters in the real etcd; real agents behind an etcd grpc-proxy)";

/// The simulated fleet's shape.
#[derive(Clone, Copy)]
struct Shape {
    clusters: u32,
    nodes: u32,
    pods: u32,
    namespaces: u32,
    /// Namespaces 0..exported of each cluster are exported.
    exported: u32,
}

impl Shape {
    fn exported_pods_per_node(&self) -> u32 {
        (0..self.pods)
            .filter(|p| p % self.namespaces < self.exported)
            .count() as u32
    }
}

const FULL: Shape = Shape {
    clusters: 4096,
    nodes: 8,
    pods: 30,
    namespaces: 20,
    exported: 1,
};
const QUICK: Shape = Shape {
    clusters: 64,
    nodes: 2,
    ..FULL
};

/// Simulated cluster k's name, id and addresses: pod CIDR a /24 inside
/// 10.16.0.0/12, a /27 per node, underlay addresses in 198.19.0.0/16.
fn name(k: u32) -> String {
    format!("s{k:04}")
}

fn cluster_id(k: u32) -> u16 {
    100 + k as u16
}

fn cluster_cidr(k: u32) -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(Ipv4Addr::new(10, 16 + (k >> 8) as u8, k as u8, 0), 24).expect("a /24")
}

fn node_cidr(k: u32, n: u32) -> ipnet::Ipv4Net {
    let base = cluster_cidr(k).network().octets();
    ipnet::Ipv4Net::new(Ipv4Addr::new(base[0], base[1], base[2], (n * 32) as u8), 27)
        .expect("a /27")
}

fn node_ip(k: u32, n: u32) -> Ipv4Addr {
    let i = k * 8 + n;
    Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8)
}

fn pod_ip(k: u32, n: u32, offset: u32) -> Ipv4Addr {
    let base = node_cidr(k, n).network().octets();
    Ipv4Addr::new(base[0], base[1], base[2], base[3] + offset as u8)
}

fn identity_of(k: u32, namespace: u32) -> u32 {
    identity::make(cluster_id(k), 256 + namespace as u16)
}

fn identity_labels(k: u32, namespace: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), format!("app-{namespace}")),
        (NAMESPACE_LABEL.to_string(), format!("ns-{namespace}")),
        (CLUSTER_LABEL.to_string(), name(k)),
    ])
}

fn main() {
    fleetnet_testing::require_root();
    let shape = bench::size(FULL, QUICK);
    // Members each list the whole mesh first: a few tens show the fan-in.
    let (nodes_per_real_cluster, proxy_members) = bench::size((2, 40), (1, 10));
    // The agents' defaults (the harness shortens leases for its tests).
    let fleet = FleetInABox::build(FleetSpec {
        ipcache_max_entries: 262_144,
        lease_ttl_seconds: 30,
        ..FleetSpec::new(2, nodes_per_real_cluster, 1)
    })
    .expect("building the fleet");
    let proxy = GrpcProxy::start_in(
        &fleet.underlay,
        &fleet.etcd.endpoint(),
        SocketAddr::from((ETCD_IP, 23790)),
    )
    .expect("starting etcd grpc-proxy");
    for node in &fleet.nodes {
        node.edit_config(|config| {
            config["etcd"]["endpoints"] = serde_yaml::Value::from(vec![proxy.endpoint()]);
            config["mesh"] = serde_yaml::from_str("{ export: annotated }").expect("YAML");
            config["identities"] = serde_yaml::from_str("{ gc-grace-seconds: 600 }").expect("YAML");
        })
        .expect("pointing the agents at the proxy");
    }
    fleet.start_agents().expect("starting the agents");
    let empty = rss_mib(&fleet);

    // The fleet's nodes, clusters and identities, then what it exports.
    let leases = fleet.with_etcd(async |client: Client| write_clusters(client, shape).await);
    let expected_nodes = (shape.clusters * shape.nodes) as usize;
    let exported = (shape.clusters * shape.nodes * shape.exported_pods_per_node()) as usize;
    wait_ipcache(&fleet, expected_nodes, "the fleet's nodes");
    let with_nodes = rss_mib(&fleet);
    let started = Instant::now();
    let written =
        fleet.with_etcd(async |client: Client| write_endpoints(client, shape, &leases).await);
    println!(
        "simulated fleet: {} clusters x {} nodes x {} pods, {written} keys written in {:.1?}",
        shape.clusters,
        shape.nodes,
        shape.pods,
        started.elapsed()
    );
    wait_ipcache(&fleet, expected_nodes + exported, "the exported endpoints");
    let with_endpoints = rss_mib(&fleet);
    let per_node = (with_nodes - empty) * 1024.0 * 1024.0 / expected_nodes as f64;
    let per_endpoint = (with_endpoints - with_nodes) * 1024.0 * 1024.0 / exported as f64;
    println!(
        "agent RSS: {empty:.1} MiB empty, {with_nodes:.1} with {expected_nodes} remote nodes, \
         {with_endpoints:.1} with {exported} exported endpoints besides"
    );
    record(
        "agent memory per remote node (with its cluster's share)",
        per_node,
        "bytes",
    );
    record(
        "agent memory per remote exported endpoint",
        per_endpoint,
        "bytes",
    );
    etcd_figures(&fleet, written);

    // A restart at full size: time to ready, to a complete ipcache, and
    // the resident set of a fresh process.
    fleet.stop_agents().expect("stopping the agents");
    let started = Instant::now();
    let binary = fleetnet_testing::fleet_in_a_box::agent_binary();
    for node in &fleet.nodes {
        node.start_agent(&binary).expect("restarting an agent");
    }
    for node in &fleet.nodes {
        node.wait_ready(Duration::from_secs(300))
            .expect("a restarted agent is ready");
    }
    let ready = started.elapsed();
    wait_ipcache(
        &fleet,
        expected_nodes + exported,
        "everything, after a restart",
    );
    let complete = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = rss_mib(&fleet);
    let entries = fleet.nodes[0].maps().ipcache().expect("ipcache").len();
    println!(
        "restart at {} clusters: ready after {ready:.1?}, ipcache complete ({entries} entries) after {complete:.1?}, RSS {restarted:.1} MiB",
        shape.clusters
    );
    let at = format!("at {} clusters", shape.clusters);
    record(
        &format!("agent RSS {at}, after a restart"),
        restarted,
        "MiB",
    );
    record(
        &format!("agent ipcache entries {at}"),
        entries as f64,
        "entries",
    );
    record(
        &format!("agent start -> ready {at}"),
        ready.as_secs_f64(),
        "s",
    );
    record(
        &format!("agent start -> ipcache complete {at}"),
        complete.as_secs_f64(),
        "s",
    );

    churn(&fleet, shape, &leases);
    watchers(&fleet, &proxy, proxy_members);
    fleet.stop_agents().expect("stopping the agents");
}

fn record(name: &str, value: f64, unit: &str) {
    Figure::new(GROUP, name, value, unit).record();
}

/// The largest resident set of the real agents, in MiB.
fn rss_mib(fleet: &FleetInABox) -> f64 {
    fleet
        .nodes
        .iter()
        .map(|node| {
            let pid = node.agent_pid().expect("the agent runs");
            fleetnet_testing::resident_kib(pid).expect("VmRSS") as f64 / 1024.0
        })
        .fold(0.0, f64::max)
}

/// Waits until every real agent's ipcache holds `remote` entries of the
/// simulated fleet (inside 10.16.0.0/12).
fn wait_ipcache(fleet: &FleetInABox, remote: usize, what: &str) {
    let fleet_range: ipnet::Ipv4Net = "10.16.0.0/12".parse().expect("a CIDR");
    let deadline = Instant::now() + Duration::from_secs(600);
    for node in &fleet.nodes {
        let maps = node.maps();
        loop {
            let ipcache = maps.ipcache().expect("ipcache");
            let entries = ipcache
                .keys()
                .filter(|cidr| fleet_range.contains(*cidr))
                .count();
            if entries == remote {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {entries} ipcache entries of the simulated fleet, waiting for {what} ({remote})",
                node.id
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Writes `ops` in transactions of 128 (etcd's default limit), eight at a
/// time; returns how many keys were written.
async fn write_all(client: &Client, ops: Vec<TxnOp>) -> usize {
    let count = ops.len();
    let batches: Vec<Vec<TxnOp>> = ops.chunks(128).map(<[TxnOp]>::to_vec).collect();
    let mut batches = batches.into_iter();
    loop {
        let mut tasks = Vec::new();
        for batch in batches.by_ref().take(8) {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .txn(Txn::new().and_then(batch))
                    .await
                    .expect("writing the simulated fleet");
            }));
        }
        if tasks.is_empty() {
            return count;
        }
        for task in tasks {
            task.await.expect("a writer");
        }
    }
}

/// Registrations, leases, leader keys, nodes and identities (masters in
/// the shared keyspace, index among the local keys); returns each
/// cluster's lease.
async fn write_clusters(mut client: Client, shape: Shape) -> Vec<i64> {
    let mut leases = Vec::new();
    for _ in 0..shape.clusters {
        let lease = client.lease_grant(3600, None).await.expect("a lease");
        leases.push(lease.id());
    }
    let mut ops = Vec::new();
    for k in 0..shape.clusters {
        let (name, lease) = (
            name(k),
            Some(PutOptions::new().with_lease(leases[k as usize])),
        );
        let record = ClusterRecord {
            v: VERSION,
            id: cluster_id(k),
            pod_cidrs: vec![cluster_cidr(k)],
            labels: Default::default(),
            routing: Default::default(),
            routing_peers: Default::default(),
        };
        ops.push(TxnOp::put(keys::cluster(&name), record.encode(), None));
        ops.push(TxnOp::put(
            keys::cluster_id(cluster_id(k)),
            name.clone(),
            None,
        ));
        ops.push(TxnOp::put(keys::leader(&name), "n0", lease.clone()));
        for namespace in 0..shape.namespaces {
            let labels = identity_labels(k, namespace);
            let id = identity_of(k, namespace);
            ops.push(TxnOp::put(
                keys::identity_index(&name, &labels_hash(&labels)),
                id.to_string(),
                None,
            ));
            let record = IdentityRecord { v: VERSION, labels };
            ops.push(TxnOp::put(keys::identity(&name, id), record.encode(), None));
        }
        for n in 0..shape.nodes {
            let info = NodeInfo {
                ip: node_ip(k, n),
                pod_cidrs: vec![node_cidr(k, n)],
            };
            let node = format!("n{n}");
            let own = publish::own_keys(&name, &node, Some(&info), &BTreeMap::new(), |_| None);
            ops.extend(
                own.into_iter()
                    .map(|(key, value)| TxnOp::put(key, value, lease.clone())),
            );
        }
    }
    write_all(&client, ops).await;
    leases
}

/// Every node's pods (through the agent's own [`publish::own_keys`]) and
/// each cluster's global Service backends; returns how many keys.
async fn write_endpoints(client: Client, shape: Shape, leases: &[i64]) -> usize {
    let mut ops = Vec::new();
    for k in 0..shape.clusters {
        let (name, lease) = (
            name(k),
            Some(PutOptions::new().with_lease(leases[k as usize])),
        );
        for n in 0..shape.nodes {
            let node = format!("n{n}");
            let info = NodeInfo {
                ip: node_ip(k, n),
                pod_cidrs: vec![node_cidr(k, n)],
            };
            let pods: BTreeMap<Ipv4Addr, NodePod> = (1..=shape.pods)
                .map(|offset| {
                    let namespace = (offset - 1) % shape.namespaces;
                    let ip = pod_ip(k, n, offset);
                    let pod = NodePod {
                        namespace: format!("ns-{namespace}"),
                        name: format!("pod-{n}-{offset}"),
                        ip,
                        identity_labels: identity_labels(k, namespace),
                        named_ports: Default::default(),
                        exported: namespace < shape.exported,
                    };
                    (ip, pod)
                })
                .collect();
            let own = publish::own_keys(&name, &node, Some(&info), &pods, |pod| {
                let namespace: u32 = pod.namespace["ns-".len()..].parse().expect("a number");
                Some(identity_of(k, namespace))
            });
            ops.extend(
                own.into_iter()
                    .map(|(key, value)| TxnOp::put(key, value, lease.clone())),
            );
            if n == 0 {
                for (ip, pod) in pods.iter().filter(|(_, pod)| pod.exported) {
                    let key = keys::backend(&pod.namespace, "web", &name, "http.tcp", *ip, 8080);
                    let record = BackendRecord {
                        v: VERSION,
                        node: node.clone(),
                    };
                    ops.push(TxnOp::put(key, record.encode(), lease.clone()));
                }
            }
        }
    }
    write_all(&client, ops).await
}

/// etcd's database size and resident set, and how many keys it holds.
fn etcd_figures(fleet: &FleetInABox, written: usize) {
    let metrics = http_get(
        &fleet.underlay,
        SocketAddr::from((ETCD_IP, 2379)),
        "/metrics",
    )
    .expect("etcd's metrics");
    let db = metric_value(&metrics, "etcd_mvcc_db_total_size_in_bytes")
        .or_else(|| metric_value(&metrics, "etcd_debugging_mvcc_db_total_size_in_bytes"))
        .expect("etcd's database size");
    let keys = metric_value(&metrics, "etcd_debugging_mvcc_keys_total").unwrap_or(0.0);
    let pid = fleet.etcd.pid().expect("etcd runs");
    let rss = fleetnet_testing::resident_kib(pid).expect("etcd's VmRSS") as f64 / 1024.0;
    let db_mib = db / 1024.0 / 1024.0;
    println!(
        "etcd: {keys} keys ({written} written for the endpoints), database {db_mib:.0} MiB, RSS {rss:.0} MiB"
    );
    record("etcd keys", keys, "keys");
    record("etcd database size", db_mib, "MiB");
    record("etcd RSS", rss, "MiB");
}

/// One endpoint change, as the churn writer made it.
struct Change {
    ip: Ipv4Addr,
    /// The identity every real agent should resolve `ip` to afterwards.
    identity: u32,
    written: Instant,
}

/// Exported pods added at one per 20 ms in clusters across the fleet, then
/// removed at the same pace; every real agent's ipcache is watched for
/// each change.
fn churn(fleet: &FleetInABox, shape: Shape, leases: &[i64]) {
    let changes = bench::size(500, 50);
    let (sent, received) = sync_mpsc::channel::<Change>();
    let endpoint = fleet.etcd.endpoint();
    let leases = leases.to_vec();
    let writer = {
        let underlay = fleet.underlay.alias();
        std::thread::spawn(move || {
            underlay
                .enter(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime");
                    runtime.block_on(churn_writer(endpoint, shape, leases, changes, sent));
                })
                .expect("entering the underlay");
        })
    };
    let maps: Vec<DatapathMaps> = fleet.nodes.iter().map(|node| node.maps()).collect();
    let mut pending: Vec<Change> = Vec::new();
    let mut delays = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        loop {
            match received.try_recv() {
                Ok(change) => pending.push(change),
                Err(sync_mpsc::TryRecvError::Empty) => break,
                Err(sync_mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        pending.retain(|change| {
            let everywhere = maps.iter().all(|maps| {
                maps.ipcache_lookup(change.ip)
                    .is_some_and(|entry| entry.identity == change.identity)
            });
            if everywhere {
                delays.push(change.written.elapsed());
            } else {
                assert!(
                    change.written.elapsed() < Duration::from_secs(60),
                    "{} not converged after 60 s",
                    change.ip
                );
            }
            !everywhere
        });
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().expect("the churn writer");
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
    let (median, p99) = (at(0.5), at(0.99));
    println!(
        "endpoint change -> every real agent's ipcache, at {} clusters: median {median:.1?}, p99 {p99:.1?} (of {} changes)",
        shape.clusters,
        delays.len()
    );
    let at = format!("at {} clusters", shape.clusters);
    record(
        &format!("endpoint change convergence {at}, median"),
        median.as_secs_f64() * 1000.0,
        "ms",
    );
    record(
        &format!("endpoint change convergence {at}, p99"),
        p99.as_secs_f64() * 1000.0,
        "ms",
    );
}

async fn churn_writer(
    endpoint: String,
    shape: Shape,
    leases: Vec<i64>,
    changes: usize,
    sent: sync_mpsc::Sender<Change>,
) {
    let mut client = kv::connect(&[endpoint], None).await.expect("etcd");
    // Offset 31 of a node's /27 holds no pod: the churn's pods go there,
    // each on another node, spread over the clusters.
    let place = |i: usize| {
        let k = (i as u32 * 7919) % shape.clusters;
        let n = (i as u32 / shape.clusters) % shape.nodes;
        (k, n, pod_ip(k, n, 31))
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for phase in [true, false] {
        for i in 0..changes {
            tick.tick().await;
            let (k, n, ip) = place(i);
            let name = name(k);
            let key = keys::endpoint(&name, ip);
            let identity = if phase {
                let record = EndpointRecord {
                    v: VERSION,
                    identity: identity_of(k, 0),
                    node: format!("n{n}"),
                    namespace: "ns-0".into(),
                    pod: format!("churn-{i}"),
                    ports: Default::default(),
                };
                let lease = PutOptions::new().with_lease(leases[k as usize]);
                client
                    .put(key, record.encode(), Some(lease))
                    .await
                    .expect("adding a pod");
                identity_of(k, 0)
            } else {
                client.delete(key, None).await.expect("removing a pod");
                identity::cluster_pods(cluster_id(k))
            };
            let change = Change {
                ip,
                identity,
                written: Instant::now(),
            };
            if sent.send(change).is_err() {
                return;
            }
        }
    }
}

/// Watchers etcd holds for `members` lightweight members (the agent's
/// mesh watcher, spread over 8 cluster names), connected directly and
/// through the proxy.
fn watchers(fleet: &FleetInABox, proxy: &GrpcProxy, members: usize) {
    let etcd_watchers = || {
        let metrics = http_get(
            &fleet.underlay,
            SocketAddr::from((ETCD_IP, 2379)),
            "/metrics",
        )
        .expect("etcd's metrics");
        metric_value(&metrics, "etcd_debugging_mvcc_watcher_total").expect("etcd's watcher count")
    };
    let mut figures = Vec::new();
    for (how, endpoint) in [
        ("directly", fleet.etcd.endpoint()),
        ("through the proxy", proxy.endpoint()),
    ] {
        let before = etcd_watchers();
        let during = fleet.in_underlay(async || {
            let (listed_tx, mut listed) = mpsc::channel::<()>(members);
            let mut tasks = Vec::new();
            for m in 0..members {
                let client = kv::connect(std::slice::from_ref(&endpoint), None)
                    .await
                    .expect("etcd");
                let (events_tx, mut events) = mpsc::channel(1 << 16);
                tasks.push(tokio::spawn(watcher::run(
                    client,
                    name(m as u32 % 8),
                    events_tx,
                )));
                let listed_tx = listed_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let mut told = false;
                    while let Some(event) = events.recv().await {
                        if matches!(event, MeshEvent::Listing(_)) && !told {
                            told = listed_tx.send(()).await.is_ok();
                        }
                    }
                }));
            }
            for _ in 0..members {
                listed.recv().await.expect("members list the mesh");
            }
            // The watches are opened right after the listing.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let during = tokio::task::block_in_place(etcd_watchers);
            for task in tasks {
                task.abort();
            }
            during
        });
        let held = during - before;
        println!("{members} mesh watchers {how}: etcd holds {held} more watchers");
        figures.push((how, held));
    }
    for (how, held) in figures {
        record(
            &format!("watchers etcd holds for {members} mesh members, {how}"),
            held,
            "watchers",
        );
    }
}
