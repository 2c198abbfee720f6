//! Selective export end to end, on 2 clusters x 2 nodes x 1 pod with
//! etcd's authentication on:
//!
//! - annotating c2's namespace `clustermesh.cilium.io/global: "false"`
//!   takes its pods out of the shared keyspace: c1 holds no /32 of them,
//!   only c2's node CIDRs with c2's cluster identity, while c2's other
//!   node still knows them by identity (c2's local keys, which c1's etcd
//!   user cannot read), and c1 is not told their identities;
//! - pods not exported still reach and are reached across the border, and
//!   a policy allowing "any pod of c2" admits them, while one naming their
//!   pod labels does not;
//! - annotating the namespace `fleetnet.io/export: "true"` brings them
//!   back, with their identities, and the pod-label policy admits them.

use std::{net::Ipv4Addr, time::Duration};

use dataplane_common::identity;
use fleetnet_store::keys;
use fleetnet_testing::{
    fleet_in_a_box::{FleetInABox, FleetSpec},
    poll, probe, progress, wait_for,
};

const C1_POD: &str = "c1/n1/p1";
const C2_POD: &str = "c2/n1/p1";

/// Allows into c1's `app: p1` pods what `peer` (a YAML flow map) selects.
fn allow_from(peer: &str) -> String {
    format!(
        "{{ podSelector: {{ matchLabels: {{ app: p1 }} }}, ingress: [ {{ from: [ {peer} ] }} ] }}"
    )
}

const ANY_POD_OF_C2: &str =
    "{ namespaceSelector: {}, podSelector: { matchLabels: { fleetnet.io/cluster: c2 } } }";
const C2_PODS_LABELLED_P1: &str =
    "{ namespaceSelector: {}, podSelector: { matchLabels: { app: p1, fleetnet.io/cluster: c2 } } }";

fn namespace(annotation: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\n\
         metadata: {{ name: default, labels: {{ env: test }}, annotations: {{ {annotation} }} }}\n"
    )
}

/// The identity `node` resolves `pod`'s address to.
fn identity_on(fleet: &FleetInABox, node: &str, pod: &str) -> Option<u32> {
    let ip = fleet.pod(pod).ip;
    fleet
        .node(node)
        .maps()
        .ipcache_lookup(ip)
        .map(|e| e.identity)
}

/// /32 entries of cluster `cluster`'s pods in `node`'s ipcache.
fn pod_entries_of(fleet: &FleetInABox, node: &str, cluster: u16) -> usize {
    let ipcache = fleet.node(node).maps().ipcache().unwrap_or_default();
    ipcache
        .iter()
        .filter(|(cidr, entry)| cidr.prefix_len() == 32 && entry.cluster_id == cluster)
        .count()
}

fn pings(fleet: &FleetInABox, from: &str, to: &str) -> bool {
    let to: Ipv4Addr = fleet.pod(to).ip;
    probe::ping(&fleet.pod(from).netns, to, Duration::from_millis(700)).unwrap()
}

/// Waits until a ping from `from` to `to` succeeds (or fails) as `expected`.
fn wait_reach(fleet: &FleetInABox, from: &str, to: &str, expected: bool) {
    let reached = poll(Duration::from_secs(15), Duration::from_millis(100), || {
        (pings(fleet, from, to) == expected).then_some(())
    });
    assert!(
        reached.is_some(),
        "{from} -> {to}: expected {}",
        if expected { "a reply" } else { "no reply" }
    );
}

#[test]
fn pods_of_namespaces_not_exported_stay_in_their_cluster_but_are_reached() {
    let spec = FleetSpec {
        etcd_auth: true,
        ..FleetSpec::new(2, 2, 1)
    };
    let fleet = FleetInABox::build(spec).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("initial convergence");
    let exported_identity = identity_on(&fleet, "c1/n1", C2_POD).unwrap();
    assert!(exported_identity & 0xffff >= 256, "{exported_identity}");

    // Keep c2's namespace in.
    fleet
        .write_manifest(
            2,
            "namespace.yaml",
            &namespace("clustermesh.cilium.io/global: \"false\""),
        )
        .unwrap();
    let took = wait_for(
        "c1 knows c2's pods by c2's cluster identity only",
        Duration::from_secs(15),
        || {
            ["c1/n1", "c1/n2"].iter().all(|node| {
                pod_entries_of(&fleet, node, 2) == 0
                    && identity_on(&fleet, node, C2_POD) == Some(identity::cluster_pods(2))
            })
        },
    );
    progress(&format!(
        "namespace kept in -> c1 holds none of its pods: {took:?}"
    ));
    // c2's other node still has the pod's own identity.
    assert_eq!(
        identity_on(&fleet, "c2/n2", C2_POD),
        Some(exported_identity),
        "c2's own nodes keep the pod's identity"
    );
    let shared = fleet.etcd_keys(&keys::endpoints_of("c2")).unwrap();
    let local = fleet.etcd_keys(&keys::local_endpoints_of("c2")).unwrap();
    assert!(shared.is_empty(), "still shared: {shared:?}");
    assert_eq!(local.len(), 2, "{local:?}");
    // Nor does c1 learn the identities of what c2 keeps in.
    let identities = fleet
        .etcd_keys(&keys::exported_identities_of("c2"))
        .unwrap();
    assert!(identities.is_empty(), "still shared: {identities:?}");
    // c1's user cannot even read what c2 keeps to itself.
    let login = fleet.etcd_login(1).unwrap();
    let read = |prefix: &str| {
        fleet
            .etcdctl_as(Some(&login), &["get", "--prefix", "--keys-only", prefix])
            .unwrap()
            .output()
            .unwrap()
    };
    let refused = read(&keys::local_of("c2"));
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("permission denied"),
        "c1 read c2's local keys: {refused:?}"
    );
    assert!(read(&keys::local_of("c1")).status.success());

    // Still reached both ways, through the node CIDR, anti-spoofing and all.
    assert!(pings(&fleet, C1_POD, C2_POD), "c1 -> c2 not exported");
    assert!(pings(&fleet, C2_POD, C1_POD), "c2 not exported -> c1");

    // Policies: the whole cluster admits it, its pod labels do not.
    fleet
        .write_policy(1, "from-c2", &allow_from(ANY_POD_OF_C2))
        .unwrap();
    wait_reach(&fleet, C2_POD, C1_POD, true);
    fleet
        .write_policy(1, "from-c2", &allow_from(C2_PODS_LABELLED_P1))
        .unwrap();
    wait_reach(&fleet, C2_POD, C1_POD, false);

    // Export it again: identities come back, and so does the label match.
    fleet
        .write_manifest(
            2,
            "namespace.yaml",
            &namespace("fleetnet.io/export: \"true\""),
        )
        .unwrap();
    let took = wait_for(
        "c1 knows c2's pods by their identities again",
        Duration::from_secs(15),
        || {
            ["c1/n1", "c1/n2"]
                .iter()
                .all(|node| pod_entries_of(&fleet, node, 2) == 2)
        },
    );
    progress(&format!(
        "namespace exported -> c1 holds its pods: {took:?}"
    ));
    assert_eq!(
        identity_on(&fleet, "c1/n1", C2_POD),
        Some(exported_identity)
    );
    assert_eq!(
        fleet
            .etcd_keys(&keys::local_endpoints_of("c2"))
            .unwrap()
            .len(),
        0
    );
    wait_reach(&fleet, C2_POD, C1_POD, true);
}
