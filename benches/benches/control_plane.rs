//! The control plane on the fleet in a box (2 clusters x 1 node, real
//! agents, real etcd):
//!
//! - etcd writes per backend change in a 5,000-backend global service:
//!   cluster c1 exports the backends, c2 imports them; one backend at a
//!   time turns not ready and ready again, and each change is counted in
//!   bytes the exporting agent wrote and etcd revisions;
//! - agent memory per remote endpoint: a simulated cluster publishes
//!   100,000 endpoints on 400 nodes straight into etcd; the resident set
//!   of c1's agent is read before and once all of them are in its ipcache.
//!
//! - endpoint convergence: K simulated members (10, 50, 200; each its own
//!   etcd client running the agent's mesh watcher) and the time from an
//!   endpoint record written to every member having it.
//!
//! Quick mode: 500 backends, 2,000 endpoints, 5 members.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use dataplane_common::identity;
use etcd_client::{Client, Txn, TxnOp};
use fleetnet_agent::mesh::{
    registration,
    watcher::{self, MeshEvent},
};
use fleetnet_benches::{self as bench, Figure};
use fleetnet_store::{
    self as kv, Update, keys,
    records::{EndpointRecord, NodeRecord, Record, VERSION},
};
use fleetnet_testing::fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec};
use tokio::sync::mpsc;

const GROUP: &str = "Control plane (fleet in a box, real agents and etcd)";
const CHANGES: usize = 20;
/// The simulated cluster's id and pod range.
const SIMULATED: u16 = 50;
const SIMULATED_NODES: u32 = 400;

fn main() {
    fleetnet_testing::require_root();
    let (backends, endpoints) = (bench::size(5_000, 500), bench::size(100_000, 2_000));
    let fleet = FleetInABox::build(FleetSpec {
        ipcache_max_entries: 131_072,
        ..FleetSpec::new(2, 1, 1)
    })
    .expect("building the fleet");
    fleet.start_agents().expect("starting the agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    backend_changes(&fleet, backends);
    // Before the 100,000 endpoints, which every new member would list.
    for members in bench::size(vec![10, 50, 200], vec![5]) {
        convergence(&fleet, members);
    }
    memory_per_endpoint(&fleet, endpoints);
    fleet.stop_agents().expect("stopping the agents");
}

fn etcd_revision(fleet: &FleetInABox) -> i64 {
    fleet.with_etcd(async |mut client: Client| {
        let response = client.get("/", None).await.expect("etcd get");
        response.header().map_or(0, |h| h.revision())
    })
}

fn backend_ip(i: usize) -> Ipv4Addr {
    let n = 128 * 256 + i as u32;
    Ipv4Addr::new(10, 1, (n >> 8) as u8, n as u8)
}

/// EndpointSlices of at most 1,000 endpoints (the API's limit), backend
/// `not_ready` excepted.
fn write_backends(fleet: &FleetInABox, backends: usize, not_ready: Option<usize>) {
    for (slice, chunk) in (0..backends).collect::<Vec<_>>().chunks(1000).enumerate() {
        let endpoints: String = chunk
            .iter()
            .map(|&i| {
                format!(
                    "  - {{ addresses: [{}], conditions: {{ ready: {} }}, nodeName: n1 }}\n",
                    backend_ip(i),
                    not_ready != Some(i)
                )
            })
            .collect();
        let yaml = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{ name: big-{slice}, namespace: default, labels: {{ kubernetes.io/service-name: big }} }}\n\
             addressType: IPv4\nports: [ {{ name: http, port: {BACKEND_PORT}, protocol: TCP }} ]\nendpoints:\n{endpoints}"
        );
        fleet
            .write_manifest(1, &format!("endpoints-big-{slice}.yaml"), &yaml)
            .expect("writing a slice");
    }
}

/// Waits until c2's node serves the service with `count` backends.
fn wait_imported(fleet: &FleetInABox, count: u16) -> Duration {
    fleet
        .node("c2/n1")
        .wait_backends(
            Ipv4Addr::new(172, 20, 2, 99),
            count,
            Duration::from_secs(60),
        )
        .unwrap()
}

fn bytes_written(fleet: &FleetInABox) -> f64 {
    fleet
        .node("c1/n1")
        .metric("fleetnet_etcd_bytes_written_total")
        .expect("c1's metrics")
        .expect("fleetnet_etcd_bytes_written_total")
}

fn backend_changes(fleet: &FleetInABox, backends: usize) {
    let global = [("service.cilium.io/global", "true")];
    fleet
        .write_service(1, "big", Ipv4Addr::new(172, 20, 1, 99), &global)
        .expect("service in c1");
    fleet
        .write_service(2, "big", Ipv4Addr::new(172, 20, 2, 99), &global)
        .expect("service in c2");
    let started = Instant::now();
    write_backends(fleet, backends, None);
    wait_imported(fleet, backends as u16);
    println!(
        "{backends} backends exported by c1 and imported by c2 in {:.1?}",
        started.elapsed()
    );
    // Let the exporting agent's writes settle.
    std::thread::sleep(Duration::from_secs(2));
    let (bytes, revision) = (bytes_written(fleet), etcd_revision(fleet));
    let mut convergence = Vec::new();
    for change in 0..CHANGES {
        let gone = change % 2 == 0;
        let victim = (change / 2) * 7 % backends;
        write_backends(fleet, backends, gone.then_some(victim));
        let count = if gone { backends - 1 } else { backends };
        convergence.push(wait_imported(fleet, count as u16));
    }
    std::thread::sleep(Duration::from_secs(1));
    let per_change_bytes = (bytes_written(fleet) - bytes) / CHANGES as f64;
    let per_change_revisions = (etcd_revision(fleet) - revision) as f64 / CHANGES as f64;
    convergence.sort();
    let median = convergence[convergence.len() / 2];
    println!(
        "per backend change at {backends} backends: {per_change_bytes:.0} bytes written by the exporting agent, \
         {per_change_revisions:.1} etcd revisions; imported by the other cluster in {median:.1?} (median, manifest written -> map)"
    );
    let at = format!("at {backends} backends");
    Figure::new(
        GROUP,
        &format!("bytes written per backend change, {at}"),
        per_change_bytes,
        "bytes",
    )
    .record();
    Figure::new(
        GROUP,
        &format!("etcd revisions per backend change, {at}"),
        per_change_revisions,
        "revisions",
    )
    .record();
    Figure::new(
        GROUP,
        &format!("backend change imported by the other cluster, {at}, median"),
        median.as_secs_f64() * 1000.0,
        "ms",
    )
    .record();
}

/// The simulated cluster (idempotent, as every agent of a cluster
/// registers), with its node n0.
async fn register_simulated(client: &mut Client) {
    let cidr = "10.128.0.0/14".parse().expect("a CIDR");
    registration::register(client, "sim", SIMULATED, &[cidr])
        .await
        .expect("registering the simulated cluster");
    let node = NodeRecord {
        v: VERSION,
        ip: Ipv4Addr::new(198, 19, 0, 0),
        pod_cidrs: vec!["10.128.0.0/24".parse().expect("a CIDR")],
    };
    client
        .put(keys::node("sim", "n0"), node.encode(), None)
        .await
        .expect("writing the simulated node");
}

/// Endpoint records written one at a time by the simulated cluster; the
/// time until each of `members` watchers received it.
fn convergence(fleet: &FleetInABox, members: usize) {
    const CHANGES: u32 = 20;
    let endpoint = fleet.etcd.endpoint();
    let mut delays: Vec<Duration> = fleet.in_underlay(async move || {
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, Instant)>();
        for _ in 0..members {
            let client = kv::connect(std::slice::from_ref(&endpoint), None)
                .await
                .expect("etcd");
            let (events_tx, mut events) = mpsc::channel(1024);
            tokio::spawn(watcher::run(client, "member".into(), events_tx));
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if let MeshEvent::Update(Update::Put(stored)) = event
                        && stored.key.starts_with(&keys::endpoints_of("sim"))
                    {
                        let _ = seen_tx.send((stored.key, Instant::now()));
                    }
                }
            });
        }
        // Every member has listed and watches.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut writer = kv::connect(&[endpoint], None).await.expect("etcd");
        register_simulated(&mut writer).await;
        let mut delays = Vec::new();
        for change in 0..CHANGES {
            // Outside what memory_per_endpoint writes.
            let ip = Ipv4Addr::new(10, 130, 0, change as u8 + 1);
            let key = keys::endpoint("sim", ip);
            let record = EndpointRecord {
                v: VERSION,
                identity: identity::make(SIMULATED, 256),
                node: "n0".into(),
                namespace: "default".into(),
                pod: format!("convergence-{change}"),
                ports: Default::default(),
            };
            let written = Instant::now();
            writer
                .put(key.clone(), record.encode(), None)
                .await
                .expect("writing an endpoint");
            let mut pending = members;
            while pending > 0 {
                let (seen_key, at) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
                    .await
                    .expect("every member sees the endpoint within 30 s")
                    .expect("members run");
                if seen_key == key {
                    delays.push(at - written);
                    pending -= 1;
                }
            }
        }
        delays
    });
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
    let (median, p99) = (at(0.5), at(0.99));
    println!(
        "endpoint written -> received, by each of {members} members: median {median:.1?}, p99 {p99:.1?} (of {} deliveries)",
        delays.len()
    );
    for (name, value) in [("median", median), ("p99", p99)] {
        Figure::new(
            GROUP,
            &format!("endpoint convergence, {members} members, {name}"),
            value.as_secs_f64() * 1000.0,
            "ms",
        )
        .record();
    }
}

fn resident_kib(pid: u32) -> f64 {
    fleetnet_testing::resident_kib(pid).expect("the agent's VmRSS") as f64
}

fn memory_per_endpoint(fleet: &FleetInABox, endpoints: usize) {
    let node = fleet.node("c1/n1");
    let pid = node.agent_pid().expect("c1's agent runs");
    let remote = || {
        node.metric("fleetnet_mesh_remote_endpoints")
            .expect("c1's metrics")
            .unwrap_or(0.0)
    };
    let before_endpoints = remote();
    let before = resident_kib(pid);
    let started = Instant::now();
    fleet.with_etcd(async |mut client: Client| {
        let name = "sim";
        register_simulated(&mut client).await;
        let mut operations = Vec::new();
        for n in 0..SIMULATED_NODES {
            let record = NodeRecord {
                v: VERSION,
                ip: Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8),
                pod_cidrs: vec![
                    format!("10.{}.{}.0/24", 128 + (n >> 8), n & 255)
                        .parse()
                        .expect("a CIDR"),
                ],
            };
            operations.push(TxnOp::put(
                keys::node(name, &format!("n{n}")),
                record.encode(),
                None,
            ));
        }
        for i in 0..endpoints as u32 {
            let n = i % SIMULATED_NODES;
            let ip = Ipv4Addr::new(
                10,
                128 + (n >> 8) as u8,
                (n & 255) as u8,
                (i / SIMULATED_NODES) as u8 + 1,
            );
            let record = EndpointRecord {
                v: VERSION,
                identity: identity::make(SIMULATED, 256 + (i % 100) as u16),
                node: format!("n{n}"),
                namespace: "default".into(),
                pod: format!("pod-{i}"),
                ports: Default::default(),
            };
            operations.push(TxnOp::put(keys::endpoint(name, ip), record.encode(), None));
        }
        // etcd's default limit of operations per transaction.
        for batch in operations.chunks(128) {
            client
                .txn(Txn::new().and_then(batch.to_vec()))
                .await
                .expect("writing the simulated cluster");
        }
    });
    let written = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while remote() < before_endpoints + endpoints as f64 {
        assert!(
            Instant::now() < deadline,
            "c1 took in {} of {endpoints} remote endpoints",
            remote() - before_endpoints
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let programmed = started.elapsed();
    // Freed buffers of the initial burst go back to the allocator first.
    std::thread::sleep(Duration::from_secs(2));
    let after = resident_kib(pid);
    let per_endpoint = (after - before) * 1024.0 / endpoints as f64;
    println!(
        "{endpoints} remote endpoints: written in {written:.1?}, in c1's ipcache after {programmed:.1?}; \
         agent RSS {before:.0} KiB -> {after:.0} KiB, {per_endpoint:.0} bytes per remote endpoint"
    );
    Figure::new(
        GROUP,
        &format!("agent memory per remote endpoint, at {endpoints}"),
        per_endpoint,
        "bytes",
    )
    .record();
    Figure::new(
        GROUP,
        &format!("{endpoints} remote endpoints published -> all in c1's ipcache"),
        programmed.as_secs_f64(),
        "s",
    )
    .record();
}
