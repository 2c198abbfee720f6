//! The mesh state's validation rules, against records written by hand.

use dataplane_common::identity;
use fleetnet_store::{
    keys,
    records::{Record, VERSION},
};

use super::*;

fn local() -> Viewpoint {
    Viewpoint {
        cluster: "c1".into(),
        cluster_id: 1,
        pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        node: "n1".into(),
        routing: Default::default(),
        routing_peers: Default::default(),
    }
}

fn put(key: String, record: &impl Record, revision: i64) -> Update {
    Update::Put(StoredValue {
        key,
        value: record.encode(),
        create_revision: revision,
        mod_revision: revision,
    })
}

fn raw(key: String, value: &[u8], revision: i64) -> Update {
    Update::Put(StoredValue {
        key,
        value: value.to_vec(),
        create_revision: revision,
        mod_revision: revision,
    })
}

fn stored(key: String, value: Vec<u8>, revision: i64) -> StoredValue {
    StoredValue {
        key,
        value,
        create_revision: revision,
        mod_revision: revision,
    }
}

/// Registers cluster `name` the way a real registration does.
fn register(
    state: &mut MeshState,
    name: &str,
    id: u16,
    cidr: &str,
    revision: i64,
) -> Vec<IpcacheChange> {
    let record = ClusterRecord {
        v: VERSION,
        id,
        pod_cidrs: vec![cidr.parse().unwrap()],
        labels: BTreeMap::new(),
        routing: Default::default(),
        routing_peers: Default::default(),
    };
    let mut changes = state.apply(raw(keys::cluster_id(id), name.as_bytes(), revision));
    changes.extend(state.apply(put(keys::cluster(name), &record, revision)));
    changes
}

fn node(ip: [u8; 4], cidr: &str) -> NodeRecord {
    NodeRecord {
        v: VERSION,
        ip: ip.into(),
        pod_cidrs: vec![cidr.parse().unwrap()],
    }
}

fn endpoint(identity: u32, node: &str) -> EndpointRecord {
    EndpointRecord {
        v: VERSION,
        identity,
        node: node.into(),
        namespace: "default".into(),
        pod: "web".into(),
        ports: BTreeMap::new(),
    }
}

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

#[test]
fn cluster_stats_count_what_each_cluster_contributes() {
    let mut state = MeshState::new(local());
    register(&mut state, "c2", 2, "10.2.0.0/16", 10);
    register(&mut state, "c3", 3, "10.3.0.0/16", 11);
    for (n, ip) in [("n1", [198, 18, 2, 11]), ("n2", [198, 18, 2, 12])] {
        let cidr = format!("10.2.{}.0/24", ip[3] - 10);
        state.apply(put(keys::node("c2", n), &node(ip, &cidr), 12));
    }
    for host in [11, 12, 13] {
        let pod = Ipv4Addr::new(10, 2, 1, host);
        state.apply(put(
            keys::endpoint("c2", pod),
            &endpoint(identity::make(2, 300), "n1"),
            13,
        ));
    }
    // An endpoint on a node nobody published is not in use.
    state.apply(put(
        keys::endpoint("c2", Ipv4Addr::new(10, 2, 9, 11)),
        &endpoint(identity::make(2, 300), "n9"),
        14,
    ));
    let backend = BackendRecord {
        v: VERSION,
        node: "n1".into(),
    };
    for service in ["web", "db"] {
        let key = keys::backend(
            "shop",
            service,
            "c2",
            "http",
            Ipv4Addr::new(10, 2, 1, 11),
            80,
        );
        state.apply(put(key, &backend, 15));
    }

    let stats = state.cluster_stats();
    assert_eq!(stats.keys().collect::<Vec<_>>(), ["c1", "c2", "c3"]);
    let c2 = &stats["c2"];
    assert_eq!((c2.id, c2.nodes, c2.endpoints, c2.services), (2, 2, 3, 2));
    assert!(c2.last_change.is_some());
    let c3 = &stats["c3"];
    assert_eq!(
        (c3.nodes, c3.endpoints, c3.services),
        (0, 0, 0),
        "registered, no node: disconnected"
    );
    assert_eq!(
        state
            .endpoint(Ipv4Addr::new(10, 2, 1, 12))
            .map(|(cluster, record)| (cluster, record.identity)),
        Some(("c2", identity::make(2, 300)))
    );
}

#[test]
fn a_remote_cluster_programs_its_nodes_and_endpoints() {
    let mut state = MeshState::new(local());
    assert!(register(&mut state, "c2", 2, "10.2.0.0/16", 10).is_empty());
    let changes = state.apply(put(
        keys::node("c2", "n1"),
        &node([198, 18, 2, 11], "10.2.1.0/24"),
        11,
    ));
    let expected = IpcacheEntry {
        identity: identity::cluster_pods(2),
        tunnel_endpoint: [198, 18, 2, 11],
        cluster_id: 2,
        flags: 0,
    };
    assert_eq!(
        changes,
        vec![IpcacheChange::Upsert(net("10.2.1.0/24"), expected)]
    );

    let pod = Ipv4Addr::new(10, 2, 1, 11);
    let changes = state.apply(put(
        keys::endpoint("c2", pod),
        &endpoint(identity::make(2, 300), "n1"),
        12,
    ));
    let entry = IpcacheEntry {
        identity: identity::make(2, 300),
        ..expected
    };
    assert_eq!(
        changes,
        vec![IpcacheChange::Upsert(net("10.2.1.11/32"), entry)]
    );
    assert_eq!(state.endpoint_count(), 1);

    // Deleting the node takes its endpoints with it.
    let mut changes = state.apply(Update::Delete {
        key: keys::node("c2", "n1"),
    });
    changes.sort_by_key(|change| format!("{change:?}"));
    assert_eq!(
        changes,
        vec![
            IpcacheChange::Remove(net("10.2.1.0/24")),
            IpcacheChange::Remove(net("10.2.1.11/32"))
        ]
    );
    assert!(state.ipcache().is_empty());
}

#[test]
fn an_endpoint_waits_for_its_node() {
    let mut state = MeshState::new(local());
    register(&mut state, "c2", 2, "10.2.0.0/16", 10);
    let pod = Ipv4Addr::new(10, 2, 1, 11);
    assert!(
        state
            .apply(put(
                keys::endpoint("c2", pod),
                &endpoint(identity::make(2, 300), "n1"),
                11
            ))
            .is_empty()
    );
    let changes = state.apply(put(
        keys::node("c2", "n1"),
        &node([198, 18, 2, 11], "10.2.1.0/24"),
        12,
    ));
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(state.ipcache().contains_key(&net("10.2.1.11/32")));
}

#[test]
fn a_cluster_overlapping_an_earlier_one_is_refused_with_everything_it_publishes() {
    let mut state = MeshState::new(local());
    register(&mut state, "c2", 2, "10.2.0.0/16", 10);
    register(&mut state, "c3", 3, "10.2.128.0/17", 20);
    state.apply(put(
        keys::node("c3", "n1"),
        &node([198, 18, 3, 11], "10.2.130.0/24"),
        21,
    ));
    assert!(state.ipcache().is_empty());
    assert!(
        state.refused()["c3"].contains("overlaps cluster c2's 10.2.0.0/16"),
        "{:?}",
        state.refused()
    );

    // Overlapping this cluster is refused just the same.
    register(&mut state, "c4", 4, "10.1.128.0/17", 30);
    assert!(state.refused()["c4"].contains("overlaps cluster c1's"));

    // Once c2 leaves, c3 no longer overlaps anything and joins.
    state.apply(Update::Delete {
        key: keys::cluster("c2"),
    });
    assert!(!state.refused().contains_key("c3"));
    assert!(state.ipcache().contains_key(&net("10.2.130.0/24")));
}

#[test]
fn a_cluster_without_its_id_claim_is_not_used() {
    let mut state = MeshState::new(local());
    let record = ClusterRecord {
        v: VERSION,
        id: 5,
        pod_cidrs: vec![net("10.5.0.0/16")],
        labels: BTreeMap::new(),
        routing: Default::default(),
        routing_peers: Default::default(),
    };
    state.apply(put(keys::cluster("c5"), &record, 10));
    state.apply(raw(keys::cluster_id(5), b"someone-else", 10));
    state.apply(put(
        keys::node("c5", "n1"),
        &node([198, 18, 5, 11], "10.5.1.0/24"),
        11,
    ));
    assert!(state.ipcache().is_empty());
    assert!(state.refused()["c5"].contains("claimed by cluster someone-else"));
}

#[test]
fn records_outside_their_cluster_are_ignored_and_counted() {
    let mut state = MeshState::new(local());
    register(&mut state, "c2", 2, "10.2.0.0/16", 10);
    // A node of c2 claiming part of c1's space.
    state.apply(put(
        keys::node("c2", "bad"),
        &node([198, 18, 2, 99], "10.1.9.0/24"),
        11,
    ));
    state.apply(put(
        keys::node("c2", "n1"),
        &node([198, 18, 2, 11], "10.2.1.0/24"),
        12,
    ));
    // c2 publishing an endpoint in c1's space, and one with c1's identity.
    state.apply(put(
        keys::endpoint("c2", Ipv4Addr::new(10, 1, 1, 50)),
        &endpoint(identity::make(2, 300), "n1"),
        13,
    ));
    state.apply(put(
        keys::endpoint("c2", Ipv4Addr::new(10, 2, 1, 50)),
        &endpoint(identity::make(1, 300), "n1"),
        14,
    ));
    // An identity numbered in c1's range, filed under c2.
    let labels = IdentityRecord {
        v: VERSION,
        labels: BTreeMap::new(),
    };
    state.apply(put(
        keys::identity("c2", identity::make(1, 400)),
        &labels,
        15,
    ));
    // Undecodable values.
    state.apply(raw(keys::node("c2", "garbage"), b"\xff{", 16));
    state.apply(raw(
        keys::endpoint("c2", Ipv4Addr::new(10, 2, 1, 60)),
        br#"{"v":9}"#,
        17,
    ));

    let ipcache = state.ipcache();
    assert_eq!(
        ipcache.keys().copied().collect::<Vec<_>>(),
        vec![net("10.2.1.0/24")]
    );
    assert_eq!(state.counters.invalid.get("node"), Some(&1));
    assert_eq!(state.counters.invalid.get("endpoint"), Some(&1));
    let rejected = |kind: &'static str| state.counters.rejected.get(&("c2".to_string(), kind));
    assert_eq!(rejected("node"), Some(&1));
    assert_eq!(rejected("endpoint"), Some(&2));
    assert_eq!(rejected("identity"), Some(&1));
    assert!(state.identity(identity::make(1, 400)).is_none());

    // Looked at again (a node update, a fresh listing), a rejected
    // record is not counted again; a new value of it is.
    state.apply(put(
        keys::node("c2", "n1"),
        &node([198, 18, 2, 12], "10.2.1.0/24"),
        18,
    ));
    let listing: Vec<StoredValue> = [
        stored(keys::cluster_id(2), b"c2".to_vec(), 10),
        stored(
            keys::cluster("c2"),
            ClusterRecord {
                v: VERSION,
                id: 2,
                pod_cidrs: vec![net("10.2.0.0/16")],
                labels: BTreeMap::new(),
                routing: Default::default(),
                routing_peers: Default::default(),
            }
            .encode(),
            10,
        ),
        stored(
            keys::node("c2", "n1"),
            node([198, 18, 2, 12], "10.2.1.0/24").encode(),
            18,
        ),
        stored(
            keys::endpoint("c2", Ipv4Addr::new(10, 1, 1, 50)),
            endpoint(identity::make(2, 300), "n1").encode(),
            13,
        ),
    ]
    .into();
    state.replace(listing);
    let rejected = |kind: &'static str| state.counters.rejected.get(&("c2".to_string(), kind));
    assert_eq!(rejected("endpoint"), Some(&2));
    state.apply(put(
        keys::endpoint("c2", Ipv4Addr::new(10, 1, 1, 50)),
        &endpoint(identity::make(2, 301), "n1"),
        19,
    ));
    let rejected = |kind: &'static str| state.counters.rejected.get(&("c2".to_string(), kind));
    assert_eq!(rejected("endpoint"), Some(&3));
}

#[test]
fn this_nodes_own_records_are_left_to_the_local_source() {
    let mut state = MeshState::new(local());
    state.apply(put(
        keys::node("c1", "n1"),
        &node([198, 18, 1, 11], "10.1.1.0/24"),
        5,
    ));
    state.apply(put(
        keys::endpoint("c1", Ipv4Addr::new(10, 1, 1, 11)),
        &endpoint(identity::make(1, 300), "n1"),
        6,
    ));
    assert!(state.ipcache().is_empty());
    // Another node of this cluster is used.
    state.apply(put(
        keys::node("c1", "n2"),
        &node([198, 18, 1, 12], "10.1.2.0/24"),
        7,
    ));
    assert_eq!(
        state.ipcache()[&net("10.1.2.0/24")].tunnel_endpoint,
        [198, 18, 1, 12]
    );
}

#[test]
fn a_fresh_listing_removes_what_disappeared_meanwhile() {
    let mut state = MeshState::new(local());
    register(&mut state, "c2", 2, "10.2.0.0/16", 10);
    state.apply(put(
        keys::node("c2", "n1"),
        &node([198, 18, 2, 11], "10.2.1.0/24"),
        11,
    ));
    state.apply(put(
        keys::node("c2", "n2"),
        &node([198, 18, 2, 12], "10.2.2.0/24"),
        12,
    ));
    let listing = |key: String, value: Vec<u8>, revision| StoredValue {
        key,
        value,
        create_revision: revision,
        mod_revision: revision,
    };
    let cluster = ClusterRecord {
        v: VERSION,
        id: 2,
        pod_cidrs: vec![net("10.2.0.0/16")],
        labels: BTreeMap::new(),
        routing: Default::default(),
        routing_peers: Default::default(),
    };
    let changes = state.replace(vec![
        listing(keys::cluster_id(2), b"c2".to_vec(), 10),
        listing(keys::cluster("c2"), cluster.encode(), 10),
        listing(
            keys::node("c2", "n2"),
            node([198, 18, 2, 13], "10.2.2.0/24").encode(),
            12,
        ),
    ]);
    let mut changes: Vec<String> = changes.iter().map(|change| format!("{change:?}")).collect();
    changes.sort();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes[0].starts_with("Remove(10.2.1.0/24)"), "{changes:?}");
    assert!(changes[1].contains("198, 18, 2, 13"), "{changes:?}");
}

/// A pod of this cluster whose namespace stops (or starts) being exported
/// moves between its local and its shared key in one transaction; the two
/// events come on two watches, in either order, and the pod stays known.
#[test]
fn an_endpoint_moving_between_shared_and_local_keys_stays_known() {
    let pod = Ipv4Addr::new(10, 1, 2, 11);
    let record = endpoint(identity::make(1, 300), "n2");
    for delete_first in [false, true] {
        let mut state = MeshState::new(local());
        state.apply(put(
            keys::node("c1", "n2"),
            &node([198, 18, 1, 12], "10.1.2.0/24"),
            2,
        ));
        state.apply(put(keys::endpoint("c1", pod), &record, 3));
        let moved = put(keys::local_endpoint("c1", pod), &record, 4);
        let left = Update::Delete {
            key: keys::endpoint("c1", pod),
        };
        if delete_first {
            state.apply(left);
            state.apply(moved);
        } else {
            state.apply(moved);
            state.apply(left);
        }
        assert_eq!(
            state
                .ipcache()
                .get(&net("10.1.2.11/32"))
                .map(|e| e.identity),
            Some(identity::make(1, 300)),
            "delete first: {delete_first}"
        );
        // Leaving the local key for good removes it.
        state.apply(Update::Delete {
            key: keys::local_endpoint("c1", pod),
        });
        assert!(!state.ipcache().contains_key(&net("10.1.2.11/32")));
    }
}
