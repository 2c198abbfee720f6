//! Network policy end to end, on 3 clusters x 1 node x 2 pods, tunnelled
//! and natively routed, with the policies written as NetworkPolicy
//! manifests of the clusters:
//!
//! - c1/n1/p1 (`app=backend`) accepts `http` only from `app=frontend` of
//!   cluster c2: the same label in c3, and in c1 itself, is denied; listing
//!   the local peer lets it in;
//! - relabelling a pod of c2 grants or revokes its access, measured from
//!   the manifest write to the change in c1's datapath;
//! - the policy holds for connections that went through a global service;
//! - c2's frontends may only reach `app=backend` of any cluster, on the
//!   backend's named port `http`, and accept no connection at all (their
//!   replies pass through conntrack);
//! - a restarted agent keeps its policy map as it was;
//! - deleting the policies restores access;
//! - each denial is counted, and shown by `fleetnet observe` with both ends.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use dataplane_common::{Direction, DropReason, PolicyKey, ServiceKey, service::PROTO_TCP};
use fleetnet_testing::{
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, SERVICE_PORT, agent_binary},
    probe::{self, EchoServer},
    progress, wait_for,
};

const BACKEND: &str = "c1/n1/p1";
const LOCAL_FRONTEND: &str = "c1/n1/p2";
const FRONTEND_B: &str = "c2/n1/p1";
const OTHER_B: &str = "c2/n1/p2";
const FRONTEND_C: &str = "c3/n1/p1";
const OTHER_C: &str = "c3/n1/p2";

const BACKEND_POLICY: &str = "{ podSelector: { matchLabels: { app: backend } }, ingress: [ \
    { from: [ { podSelector: { matchLabels: { app: frontend, fleetnet.io/cluster: c2 } } } ], \
      ports: [ { port: http } ] } ] }";
const BACKEND_POLICY_WITH_LOCAL: &str = "{ podSelector: { matchLabels: { app: backend } }, ingress: [ \
    { from: [ { podSelector: { matchLabels: { app: frontend, fleetnet.io/cluster: c2 } } }, \
              { podSelector: { matchLabels: { app: frontend } } } ], \
      ports: [ { port: http } ] } ] }";
const FRONTEND_POLICY: &str = "{ podSelector: { matchLabels: { app: frontend } }, \
    policyTypes: [Ingress, Egress], egress: [ \
    { to: [ { podSelector: { matchLabels: { app: backend }, \
              matchExpressions: [ { key: fleetnet.io/cluster, operator: Exists } ] } } ], \
      ports: [ { port: http } ] } ] }";

#[derive(Debug, PartialEq, Eq)]
enum Reach {
    /// The echo server answered (with its pod id).
    Answered(String),
    /// Nothing listens there, but the packets got through.
    Refused,
    /// Silently dropped.
    TimedOut,
}

fn reach(fleet: &FleetInABox, from: &str, to: SocketAddr) -> Reach {
    match probe::tcp_exchange(&fleet.pod(from).netns, to, "hi", Duration::from_millis(400)) {
        Ok(reply) => Reach::Answered(reply.split(':').next().unwrap_or_default().to_string()),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => Reach::Refused,
        Err(_) => Reach::TimedOut,
    }
}

fn http(fleet: &FleetInABox, pod: &str) -> SocketAddr {
    SocketAddr::from((fleet.pod(pod).ip, BACKEND_PORT))
}

fn answered(pod: &str) -> Reach {
    Reach::Answered(pod.to_string())
}

/// ClusterIP of the global service `web` in `cluster`.
fn vip_ip(cluster: u16) -> Ipv4Addr {
    Ipv4Addr::new(172, 20, cluster as u8, 10)
}

fn vip(cluster: u16) -> SocketAddr {
    SocketAddr::from((vip_ip(cluster), SERVICE_PORT))
}

/// True when node `node`'s datapath lets `peer` reach `pod`'s port
/// BACKEND_PORT: the pod enforces ingress and an entry covers the identity
/// the node resolves for the peer's address (or no policy applies).
fn datapath_allows(fleet: &FleetInABox, node: &str, pod: &str, peer: &str) -> bool {
    let maps = fleet.node(node).maps();
    let Some(endpoint) = maps
        .endpoints()
        .unwrap()
        .get(&fleet.pod(pod).ip.octets())
        .copied()
    else {
        return false;
    };
    if endpoint.flags == 0 {
        return true;
    }
    let Some(identity) = identity_on(fleet, node, peer) else {
        return false;
    };
    maps.policy().unwrap().iter().any(|(key, bits)| {
        let port_matches = *bits <= PolicyKey::PROTOCOL_BITS
            || (*bits == PolicyKey::FULL_BITS && key.port == BACKEND_PORT.to_be_bytes());
        key.policy_id == endpoint.policy_id
            && key.direction == Direction::Ingress as u8
            && [identity, 0].contains(&u32::from_be_bytes(key.identity))
            && port_matches
    })
}

/// The identity node `node` gives `pod`: from its endpoints map if the pod
/// is local, else from its ipcache.
fn identity_on(fleet: &FleetInABox, node: &str, pod: &str) -> Option<u32> {
    let maps = fleet.node(node).maps();
    let ip = fleet.pod(pod).ip;
    if let Some(endpoint) = maps.endpoints().unwrap().get(&ip.octets()) {
        return Some(endpoint.identity);
    }
    maps.ipcache()
        .unwrap()
        .into_iter()
        .find(|(cidr, _)| cidr.prefix_len() == 32 && cidr.addr() == ip)
        .map(|(_, entry)| entry.identity)
}

/// Waits until `condition` holds; returns how long that took.
fn wait_until(what: &str, since: Instant, condition: impl Fn() -> bool) -> Duration {
    loop {
        if condition() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn drops(fleet: &FleetInABox, node: &str, reason: DropReason) -> u64 {
    let metrics = fleet.node(node).maps().metrics().unwrap();
    metrics
        .iter()
        .filter(|(key, _)| key.reason == reason as u8)
        .map(|(_, value)| value.packets)
        .sum()
}

#[test]
fn policy_follows_identities_across_three_clusters() {
    policy_follows_identities(FleetSpec::new(3, 1, 2));
}

#[test]
fn policy_follows_identities_across_three_natively_routed_clusters() {
    policy_follows_identities(FleetSpec::new(3, 1, 2).native());
}

fn policy_follows_identities(spec: FleetSpec) {
    let mut fleet = FleetInABox::build(spec).expect("building the fleet");
    for (pod, app) in [
        (BACKEND, "backend"),
        (LOCAL_FRONTEND, "frontend"),
        (FRONTEND_B, "frontend"),
        (OTHER_B, "other"),
        (FRONTEND_C, "frontend"),
        (OTHER_C, "other"),
    ] {
        fleet.set_pod_labels(pod, &[("app", app)]).unwrap();
    }
    for cluster in 1..=3u16 {
        fleet
            .write_service(
                cluster,
                "web",
                vip(cluster).ip().to_string().parse().unwrap(),
                &[("service.cilium.io/global", "true")],
            )
            .unwrap();
        let ready: &[(&str, bool)] = if cluster == 1 {
            &[(BACKEND, true)]
        } else {
            &[]
        };
        fleet.write_endpoints(cluster, "web", ready).unwrap();
    }
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    let _servers: Vec<EchoServer> = fleet
        .pods()
        .map(|(_, pod)| {
            EchoServer::start(
                &pod.netns,
                SocketAddr::from((pod.ip, BACKEND_PORT)),
                &pod.id,
            )
            .unwrap()
        })
        .collect();
    for cluster in 2..=3u16 {
        let key = ServiceKey {
            vip: match vip(cluster).ip() {
                std::net::IpAddr::V4(ip) => ip.octets(),
                _ => unreachable!(),
            },
            port: SERVICE_PORT.to_be(),
            protocol: PROTO_TCP,
            _pad: 0,
        };
        let node = format!("c{cluster}/n1");
        wait_until(
            "the global service has c1's backend",
            Instant::now(),
            || {
                fleet
                    .node(&node)
                    .maps()
                    .services()
                    .unwrap()
                    .get(&key)
                    .map(|s| s.backend_count)
                    == Some(1)
            },
        );
    }

    // No policy: everything is allowed.
    for client in [FRONTEND_C, OTHER_B, LOCAL_FRONTEND] {
        assert_eq!(
            reach(&fleet, client, http(&fleet, BACKEND)),
            answered(BACKEND),
            "{client}"
        );
    }

    // A short-lived policy first, so the backend's policy group is not the
    // first one (the restart below must find it by more than luck).
    let written = fleet
        .write_policy(
            1,
            "short-lived",
            "{ podSelector: { matchLabels: { app: frontend } }, ingress: [ {} ] }",
        )
        .unwrap();
    wait_until("c1 applies the short-lived policy", written, || {
        fleet.node("c1/n1").maps().endpoints().unwrap()[&fleet.pod(LOCAL_FRONTEND).ip.octets()]
            .flags
            != 0
    });

    // Selected by a policy: only c2's frontends, only on `http`.
    let written = fleet.write_policy(1, "backend", BACKEND_POLICY).unwrap();
    let applied = wait_until("c1 enforces the backend policy", written, || {
        datapath_allows(&fleet, "c1/n1", BACKEND, FRONTEND_B)
            && !datapath_allows(&fleet, "c1/n1", BACKEND, FRONTEND_C)
    });
    progress(&format!("policy written -> enforced on c1/n1: {applied:?}"));
    fleet.delete_policy(1, "short-lived").unwrap();
    let backend = http(&fleet, BACKEND);
    assert_eq!(reach(&fleet, FRONTEND_B, backend), answered(BACKEND));
    assert_eq!(
        reach(&fleet, FRONTEND_C, backend),
        Reach::TimedOut,
        "same label, cluster c3"
    );
    assert_eq!(
        reach(&fleet, LOCAL_FRONTEND, backend),
        Reach::TimedOut,
        "same label, local cluster"
    );
    assert_eq!(
        reach(&fleet, OTHER_B, backend),
        Reach::TimedOut,
        "other label, cluster c2"
    );
    let closed_port = SocketAddr::from((fleet.pod(BACKEND).ip, 9));
    assert_eq!(
        reach(&fleet, FRONTEND_B, closed_port),
        Reach::TimedOut,
        "not the http port"
    );
    assert!(drops(&fleet, "c1/n1", DropReason::PolicyDeniedIngress) >= 4);

    // The denial of c3's frontend, as an event the agent named.
    // (Events trail the counters by at most the reader's 200 ms pass.)
    let frontend_c = fleet.pod(FRONTEND_C).ip;
    let dropped = || {
        fleet
            .node("c1/n1")
            .observe(&["--verdict", "DROPPED", "--pod", "default/n1-p1"])
            .unwrap()
    };
    wait_for(
        "c3's denied frontend as an event",
        Duration::from_secs(5),
        || dropped().iter().any(|f| f.source.ip == Some(frontend_c)),
    );
    let flows = dropped();
    let flow = flows
        .iter()
        .find(|f| f.source.ip == Some(frontend_c))
        .unwrap_or_else(|| panic!("no flow from c3's frontend in {flows:?}"));
    assert_eq!(
        (flow.reason.as_str(), flow.direction.as_str()),
        ("policy_denied_ingress", "ingress")
    );
    assert_eq!(
        (
            flow.source.cluster.as_str(),
            flow.destination.cluster.as_str()
        ),
        ("c3", "c1")
    );
    assert_eq!(
        dataplane_common::identity::cluster_of(flow.source.identity),
        3
    );
    assert_eq!(
        dataplane_common::identity::cluster_of(flow.destination.identity),
        1
    );
    assert_eq!(flow.destination.port, Some(BACKEND_PORT));

    // Listing the local frontends lets them in.
    let written = fleet
        .write_policy(1, "backend", BACKEND_POLICY_WITH_LOCAL)
        .unwrap();
    wait_until("c1 lets its own frontend in", written, || {
        datapath_allows(&fleet, "c1/n1", BACKEND, LOCAL_FRONTEND)
    });
    assert_eq!(reach(&fleet, LOCAL_FRONTEND, backend), answered(BACKEND));
    assert_eq!(reach(&fleet, FRONTEND_C, backend), Reach::TimedOut);
    fleet.write_policy(1, "backend", BACKEND_POLICY).unwrap();

    // Labels decide, wherever the pod is: c2's `other` becomes a frontend,
    // c2's frontend stops being one.
    let changed = fleet
        .set_pod_labels(OTHER_B, &[("app", "frontend")])
        .unwrap();
    let granted = wait_until("relabelled pod allowed on c1", changed, || {
        datapath_allows(&fleet, "c1/n1", BACKEND, OTHER_B)
    });
    assert_eq!(reach(&fleet, OTHER_B, backend), answered(BACKEND));
    let changed = fleet
        .set_pod_labels(FRONTEND_B, &[("app", "other")])
        .unwrap();
    let revoked = wait_until("relabelled pod denied on c1", changed, || {
        let relabelled = identity_on(&fleet, "c2/n1", FRONTEND_B);
        relabelled.is_some()
            && identity_on(&fleet, "c1/n1", FRONTEND_B) == relabelled
            && !datapath_allows(&fleet, "c1/n1", BACKEND, FRONTEND_B)
    });
    assert_eq!(reach(&fleet, FRONTEND_B, backend), Reach::TimedOut);
    progress(&format!(
        "label change in c2 -> enforced on c1/n1: granted {granted:?}, revoked {revoked:?}"
    ));
    assert!(granted < Duration::from_secs(2) && revoked < Duration::from_secs(2));
    fleet
        .set_pod_labels(FRONTEND_B, &[("app", "frontend")])
        .unwrap();
    wait_until("c2's frontend allowed again", Instant::now(), || {
        datapath_allows(&fleet, "c1/n1", BACKEND, FRONTEND_B)
    });

    // Through a global service: the backend's policy still decides.
    assert_eq!(reach(&fleet, FRONTEND_B, vip(2)), answered(BACKEND));
    assert_eq!(reach(&fleet, FRONTEND_C, vip(3)), Reach::TimedOut);

    // A restarted agent (same pinned maps) finds its policy groups where
    // the previous one left them: not one entry is rewritten.
    let policy_of = |node: &str| {
        let mut entries = fleet.node(node).maps().policy().unwrap();
        entries.sort();
        entries
    };
    let before = policy_of("c1/n1");
    let c1 = fleet.node("c1/n1");
    c1.kill_agent();
    c1.start_agent(&agent_binary()).unwrap();
    c1.wait_ready(Duration::from_secs(30)).unwrap();
    assert_eq!(policy_of("c1/n1"), before);
    assert_eq!(reach(&fleet, FRONTEND_B, backend), answered(BACKEND));
    assert_eq!(reach(&fleet, FRONTEND_C, backend), Reach::TimedOut);

    // c2's frontends: egress only to backends (any cluster) on their named
    // port `http`; no ingress at all, yet replies come back.
    let written = fleet.write_policy(2, "frontend", FRONTEND_POLICY).unwrap();
    wait_until("c2 enforces the frontend policy", written, || {
        let maps = fleet.node("c2/n1").maps();
        let endpoints = maps.endpoints().unwrap();
        endpoints[&fleet.pod(FRONTEND_B).ip.octets()].flags == 3
            && !maps.policy().unwrap().is_empty()
    });
    assert_eq!(reach(&fleet, FRONTEND_B, backend), answered(BACKEND));
    assert_eq!(reach(&fleet, FRONTEND_B, vip(2)), answered(BACKEND));
    assert_eq!(
        reach(&fleet, FRONTEND_B, http(&fleet, OTHER_C)),
        Reach::TimedOut,
        "not a backend"
    );
    assert_eq!(
        reach(&fleet, OTHER_C, http(&fleet, FRONTEND_B)),
        Reach::TimedOut,
        "no ingress"
    );
    assert!(drops(&fleet, "c2/n1", DropReason::PolicyDeniedEgress) >= 1);
    assert!(drops(&fleet, "c2/n1", DropReason::PolicyDeniedIngress) >= 1);

    // Deleting the policies restores access.
    let deleted = fleet.delete_policy(1, "backend").unwrap();
    fleet.delete_policy(2, "frontend").unwrap();
    let restored = wait_until("c1 stops enforcing", deleted, || {
        datapath_allows(&fleet, "c1/n1", BACKEND, FRONTEND_C)
    });
    progress(&format!("policy deleted -> c1/n1 open again: {restored:?}"));
    wait_until("c2 stops enforcing", deleted, || {
        fleet.node("c2/n1").maps().endpoints().unwrap()[&fleet.pod(FRONTEND_B).ip.octets()].flags
            == 0
    });
    assert_eq!(reach(&fleet, FRONTEND_C, backend), answered(BACKEND));
    assert_eq!(reach(&fleet, FRONTEND_C, vip(3)), answered(BACKEND));
    assert_eq!(
        reach(&fleet, OTHER_C, http(&fleet, FRONTEND_B)),
        answered(FRONTEND_B)
    );
    assert!(fleet.node("c1/n1").maps().policy().unwrap().is_empty());
}
