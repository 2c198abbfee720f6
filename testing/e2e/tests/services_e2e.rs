//! Global services end to end, on 3 clusters x 1 node x 3 pods, tunnelled
//! and natively routed: p1 is the
//! client, p2 and p3 run echo servers that answer with their pod id. Each
//! cluster defines its own Services (own ClusterIPs) and EndpointSlices in
//! its manifests; agents load-balance in the datapath.
//!
//! - a global service spreads one client's connections over all six
//!   backends of the three clusters;
//! - `affinity: local` stays local, fails over when the local backends
//!   stop being ready, and comes back when they are ready again;
//! - a cluster with `shared: "false"` imports but its backends never
//!   receive traffic from the others;
//! - a long-lived connection keeps its backend while other backends come
//!   and go;
//! - the time from a backend becoming ready in one cluster to its first
//!   connection from another is measured.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use fleetnet_testing::{
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, SERVICE_PORT, endpoint_slice_yaml},
    probe::{self, Conversation, EchoServer},
};

const GLOBAL: (&str, &str) = ("service.cilium.io/global", "true");

fn vip(cluster: u16, service: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 20, cluster as u8, service)
}

/// Pod ids of the backends (p2, p3) of `cluster`.
fn backends(cluster: u16) -> [String; 2] {
    [format!("c{cluster}/n1/p2"), format!("c{cluster}/n1/p3")]
}

/// Waits until `cluster`'s node serves `vip` with `count` backends.
fn wait_for_backends(fleet: &FleetInABox, cluster: u16, vip: Ipv4Addr, count: u16) -> Duration {
    fleet
        .node(&format!("c{cluster}/n1"))
        .wait_backends(vip, count, Duration::from_secs(15))
        .unwrap()
}

/// Pod ids that answered `connections` short connections from `client`.
fn responders(fleet: &FleetInABox, client: &str, vip: Ipv4Addr, connections: usize) -> Vec<String> {
    let netns = &fleet.pod(client).netns;
    (0..connections)
        .map(|i| {
            let reply = probe::tcp_exchange(
                netns,
                SocketAddr::from((vip, SERVICE_PORT)),
                &format!("q{i}"),
                Duration::from_secs(3),
            )
            .unwrap_or_else(|error| panic!("{client} -> {vip}: {error}"));
            reply.split(':').next().unwrap().to_string()
        })
        .collect()
}

fn clusters(responders: &[String]) -> BTreeSet<String> {
    responders
        .iter()
        .map(|id| id.split('/').next().unwrap().to_string())
        .collect()
}

#[test]
fn global_services_across_three_clusters() {
    global_services(FleetSpec::new(3, 1, 3));
}

#[test]
fn global_services_across_three_natively_routed_clusters() {
    global_services(FleetSpec::new(3, 1, 3).native());
}

fn global_services(spec: FleetSpec) {
    let fleet = FleetInABox::build(spec).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    let _servers: Vec<EchoServer> = (1..=3)
        .flat_map(backends)
        .map(|id| {
            let pod = fleet.pod(&id);
            EchoServer::start(&pod.netns, SocketAddr::from((pod.ip, BACKEND_PORT)), &id).unwrap()
        })
        .collect();
    for cluster in 1..=3u16 {
        let ready: Vec<(&str, bool)> = Vec::new();
        let [p2, p3] = backends(cluster);
        let both = [(p2.as_str(), true), (p3.as_str(), true)];
        let shared = if cluster == 3 { "false" } else { "true" };
        fleet
            .write_service(cluster, "web", vip(cluster, 10), &[GLOBAL])
            .unwrap();
        fleet
            .write_service(
                cluster,
                "near",
                vip(cluster, 11),
                &[GLOBAL, ("service.cilium.io/affinity", "local")],
            )
            .unwrap();
        fleet
            .write_service(
                cluster,
                "partial",
                vip(cluster, 12),
                &[GLOBAL, ("service.cilium.io/shared", shared)],
            )
            .unwrap();
        fleet
            .write_service(cluster, "probe", vip(cluster, 13), &[GLOBAL])
            .unwrap();
        for service in ["web", "near", "partial"] {
            fleet.write_endpoints(cluster, service, &both).unwrap();
        }
        fleet.write_endpoints(cluster, "probe", &ready).unwrap();
    }
    for cluster in 1..=3 {
        wait_for_backends(&fleet, cluster, vip(cluster, 10), 6);
    }

    // One client's short connections reach all six backends of the three clusters.
    let answered: BTreeSet<String> = responders(&fleet, "c1/n1/p1", vip(1, 10), 60)
        .into_iter()
        .collect();
    let all: BTreeSet<String> = (1..=3).flat_map(backends).collect();
    assert_eq!(
        answered, all,
        "a global service spreads over every cluster's backends"
    );

    // affinity: local.
    wait_for_backends(&fleet, 1, vip(1, 11), 2);
    assert_eq!(
        clusters(&responders(&fleet, "c1/n1/p1", vip(1, 11), 20)),
        BTreeSet::from(["c1".to_string()])
    );
    let [c1p2, c1p3] = backends(1);
    fleet
        .write_endpoints(1, "near", &[(&c1p2, false), (&c1p3, false)])
        .unwrap();
    wait_for_backends(&fleet, 1, vip(1, 11), 4);
    let failed_over = clusters(&responders(&fleet, "c1/n1/p1", vip(1, 11), 30));
    assert_eq!(
        failed_over,
        BTreeSet::from(["c2".to_string(), "c3".to_string()]),
        "failover to the other clusters"
    );
    fleet
        .write_endpoints(1, "near", &[(&c1p2, true), (&c1p3, true)])
        .unwrap();
    wait_for_backends(&fleet, 1, vip(1, 11), 2);
    assert_eq!(
        clusters(&responders(&fleet, "c1/n1/p1", vip(1, 11), 20)),
        BTreeSet::from(["c1".to_string()]),
        "back local"
    );

    // shared: "false" in c3: c3 imports, but exports nothing.
    wait_for_backends(&fleet, 1, vip(1, 12), 4);
    let from_c1 = clusters(&responders(&fleet, "c1/n1/p1", vip(1, 12), 60));
    assert_eq!(
        from_c1,
        BTreeSet::from(["c1".to_string(), "c2".to_string()]),
        "c3's backends received traffic"
    );
    wait_for_backends(&fleet, 3, vip(3, 12), 6);
    let from_c3 = clusters(&responders(&fleet, "c3/n1/p1", vip(3, 12), 60));
    assert_eq!(
        from_c3.len(),
        3,
        "c3 still uses every cluster's backends: {from_c3:?}"
    );

    // A long-lived connection keeps its backend while others come and go.
    let mut conversation = Conversation::open(
        &fleet.pod("c2/n1/p1").netns,
        SocketAddr::from((vip(2, 10), SERVICE_PORT)),
        Duration::from_secs(3),
    )
    .unwrap();
    let first = conversation.ask("hello").unwrap();
    let backend = first.split(':').next().unwrap().to_string();
    let others: Vec<String> = all.iter().filter(|id| **id != backend).cloned().collect();
    for (round, leaving) in others.iter().enumerate() {
        let cluster: u16 = leaving[1..2].parse().unwrap();
        let stays = backends(cluster)
            .into_iter()
            .filter(|id| id != leaving)
            .collect::<Vec<_>>();
        let mut slice: Vec<(&str, bool)> = vec![(leaving.as_str(), false)];
        slice.extend(stays.iter().map(|id| (id.as_str(), true)));
        fleet.write_endpoints(cluster, "web", &slice).unwrap();
        wait_for_backends(&fleet, 2, vip(2, 10), 5);
        let reply = conversation.ask(&format!("round {round}")).unwrap();
        assert!(
            reply.starts_with(&format!("{backend}:")),
            "the connection moved from {backend}: {reply}"
        );
        let ids = backends(cluster);
        let restored: Vec<(&str, bool)> = ids.iter().map(|id| (id.as_str(), true)).collect();
        fleet.write_endpoints(cluster, "web", &restored).unwrap();
        wait_for_backends(&fleet, 2, vip(2, 10), 6);
        let reply = conversation.ask(&format!("round {round} again")).unwrap();
        assert!(
            reply.starts_with(&format!("{backend}:")),
            "the connection moved from {backend}: {reply}"
        );
    }

    // From ready in c2 to serving c1's client.
    let mut samples = Vec::new();
    for pod in backends(2) {
        let started = Instant::now();
        fleet
            .write_endpoints(2, "probe", &[(pod.as_str(), true)])
            .unwrap();
        let netns = &fleet.pod("c1/n1/p1").netns;
        let server = SocketAddr::from((vip(1, 13), SERVICE_PORT));
        let reply = loop {
            match probe::tcp_exchange(netns, server, "probe", Duration::from_millis(20)) {
                Ok(reply) => break reply,
                Err(_) => assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{pod} never served c1"
                ),
            }
        };
        samples.push(started.elapsed());
        assert!(reply.starts_with(&format!("{pod}:")), "{reply}");
        fleet.write_endpoints(2, "probe", &[]).unwrap();
        wait_for_backends(&fleet, 1, vip(1, 13), 0);
    }
    eprintln!("backend ready in c2 -> first connection from c1 through it: {samples:?}");

    // Backends without nodeName (hand-written slices, controllers'
    // backends outside pods): c2 exports the one in its pod CIDR from the
    // node holding it, and says once that it cannot export one outside.
    let [c2p2, _] = backends(2);
    let pod = fleet.pod(&c2p2);
    let outside = Ipv4Addr::new(192, 0, 2, 7);
    let slice = endpoint_slice_yaml("nodeless", &[(pod.ip, "n1", true), (outside, "n1", true)])
        .replace(", nodeName: n1", "");
    assert!(!slice.contains("nodeName"), "{slice}");
    for cluster in [1, 2] {
        fleet
            .write_service(cluster, "nodeless", vip(cluster, 14), &[GLOBAL])
            .unwrap();
    }
    fleet
        .write_manifest(2, "endpoints-nodeless.yaml", &slice)
        .unwrap();
    wait_for_backends(&fleet, 1, vip(1, 14), 1);
    let answered: BTreeSet<String> = responders(&fleet, "c1/n1/p1", vip(1, 14), 5)
        .into_iter()
        .collect();
    assert_eq!(answered, BTreeSet::from([c2p2.clone()]));
    let warning = "has no nodeName and is outside the cluster's pod CIDRs";
    let log = fleet.node("c2/n1").log();
    assert_eq!(
        log.matches(warning).count(),
        1,
        "c2's agent did not warn once about 192.0.2.7:\n{log}"
    );
}
