//! Which clusters are reached natively: only where both publish so.

use dataplane_common::identity;
use fleetnet_store::{
    keys,
    records::{Record, VERSION},
};

use super::*;

const NATIVE: RoutingMode = RoutingMode::Native;
const TUNNEL: RoutingMode = RoutingMode::Tunnel;

fn viewpoint(routing: RoutingMode, peers: &[(&str, RoutingMode)]) -> Viewpoint {
    Viewpoint {
        cluster: "c1".into(),
        cluster_id: 1,
        pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        node: "n1".into(),
        routing,
        routing_peers: peers.iter().map(|(p, m)| (p.to_string(), *m)).collect(),
    }
}

fn put(key: String, value: Vec<u8>, revision: i64) -> Update {
    Update::Put(StoredValue {
        key,
        value,
        create_revision: revision,
        mod_revision: revision,
    })
}

/// Cluster c`id` with one node and one endpoint, publishing `routing`
/// (and `peers`); returns the ipcache changes.
fn publish(
    state: &mut MeshState,
    id: u16,
    routing: RoutingMode,
    peers: &[(&str, RoutingMode)],
    revision: i64,
) -> Vec<IpcacheChange> {
    let name = format!("c{id}");
    let record = ClusterRecord {
        v: VERSION,
        id,
        pod_cidrs: vec![format!("10.{id}.0.0/16").parse().unwrap()],
        labels: BTreeMap::new(),
        routing,
        routing_peers: peers.iter().map(|(p, m)| (p.to_string(), *m)).collect(),
    };
    let mut changes = state.apply(put(
        keys::cluster_id(id),
        name.clone().into_bytes(),
        revision,
    ));
    changes.extend(state.apply(put(keys::cluster(&name), record.encode(), revision)));
    let node = NodeRecord {
        v: VERSION,
        ip: Ipv4Addr::new(198, 18, id as u8, 11),
        pod_cidrs: vec![format!("10.{id}.1.0/24").parse().unwrap()],
    };
    changes.extend(state.apply(put(keys::node(&name, "n1"), node.encode(), revision)));
    let endpoint = EndpointRecord {
        v: VERSION,
        identity: identity::make(id, 300),
        node: "n1".into(),
        namespace: "default".into(),
        pod: "web".into(),
        ports: BTreeMap::new(),
    };
    let pod = Ipv4Addr::new(10, id as u8, 1, 11);
    changes.extend(state.apply(put(keys::endpoint(&name, pod), endpoint.encode(), revision)));
    changes
}

/// Whether every ipcache entry of cluster `id` is flagged native.
fn native_entries(state: &MeshState, id: u16) -> Vec<bool> {
    state
        .ipcache()
        .values()
        .filter(|entry| entry.cluster_id == id)
        .map(|entry| entry.is_native())
        .collect()
}

#[test]
fn clusters_that_both_route_natively_are_reached_natively() {
    let mut state = MeshState::new(viewpoint(NATIVE, &[]));
    publish(&mut state, 2, NATIVE, &[], 10);
    publish(&mut state, 3, TUNNEL, &[], 11);

    assert_eq!(
        native_entries(&state, 2),
        [true, true],
        "node CIDR and endpoint"
    );
    assert!(state.route("c2").is_native());
    assert_eq!(state.route("c2").mismatch, None);
    assert!(state.route("c1").is_native(), "this cluster's own mode");

    // c3 tunnels and c1 does not say so for c3: a mismatch, tunnelled.
    assert_eq!(native_entries(&state, 3), [false, false]);
    assert_eq!(
        state.routing_mismatches().collect::<Vec<_>>(),
        [("c3", NATIVE, TUNNEL)]
    );
    assert_eq!(state.cluster_stats()["c3"].route.mode, TUNNEL);
}

#[test]
fn a_per_peer_exception_on_both_sides_agrees() {
    // c1 is native except towards c3; c3 tunnels everywhere; c2 is native
    // except towards c1.
    let mut state = MeshState::new(viewpoint(NATIVE, &[("c3", TUNNEL)]));
    publish(&mut state, 2, NATIVE, &[("c1", TUNNEL)], 10);
    publish(&mut state, 3, TUNNEL, &[], 11);

    assert_eq!(state.routing_mismatches().count(), 1, "c2 disagrees");
    assert_eq!(state.route("c3").mode, TUNNEL);
    assert_eq!(state.route("c3").mismatch, None);
    assert_eq!(state.route("c2").mismatch, Some((NATIVE, TUNNEL)));
}

#[test]
fn a_changed_mode_rewrites_only_that_clusters_entries() {
    let mut state = MeshState::new(viewpoint(NATIVE, &[]));
    publish(&mut state, 2, TUNNEL, &[], 10);
    publish(&mut state, 3, NATIVE, &[], 11);
    assert_eq!(native_entries(&state, 2), [false, false]);

    let record = ClusterRecord {
        v: VERSION,
        id: 2,
        pod_cidrs: vec!["10.2.0.0/16".parse().unwrap()],
        labels: BTreeMap::new(),
        routing: NATIVE,
        routing_peers: BTreeMap::new(),
    };
    let changes = state.apply(put(keys::cluster("c2"), record.encode(), 12));
    let mut upserted: Vec<(Ipv4Net, bool)> = changes
        .iter()
        .map(|change| match change {
            IpcacheChange::Upsert(cidr, entry) => (*cidr, entry.is_native()),
            IpcacheChange::Remove(cidr) => panic!("{cidr} removed"),
        })
        .collect();
    upserted.sort();
    assert_eq!(
        upserted,
        [
            ("10.2.1.0/24".parse().unwrap(), true),
            ("10.2.1.11/32".parse().unwrap(), true)
        ],
        "c2's two entries, nothing of c3's"
    );
    assert_eq!(state.routing_mismatches().count(), 0);
}
