//! Backends other clusters export, checked against their cluster.

use fleetnet_store::{
    keys,
    records::{Record, VERSION},
};

use super::*;

#[test]
fn remote_backends_come_from_accepted_clusters_inside_their_cidrs() {
    let mut state = MeshState::new(Viewpoint {
        cluster: "c1".into(),
        cluster_id: 1,
        pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        node: "n1".into(),
        routing: Default::default(),
        routing_peers: Default::default(),
    });
    let put = |key: String, value: Vec<u8>| {
        Update::Put(StoredValue {
            key,
            value,
            create_revision: 5,
            mod_revision: 5,
        })
    };
    let record = |id: u16, cidr: &str| {
        ClusterRecord {
            v: VERSION,
            id,
            pod_cidrs: vec![cidr.parse().unwrap()],
            labels: BTreeMap::new(),
            routing: Default::default(),
            routing_peers: Default::default(),
        }
        .encode()
    };
    state.apply(put(keys::cluster_id(2), b"c2".to_vec()));
    state.apply(put(keys::cluster("c2"), record(2, "10.2.0.0/16")));
    assert!(state.take_services_changed());
    assert!(!state.take_services_changed());
    let backend = |cluster: &str, ip: &str| {
        put(
            keys::backend(
                "shop",
                "web",
                cluster,
                "http.tcp",
                ip.parse().unwrap(),
                8080,
            ),
            BackendRecord {
                v: VERSION,
                node: "n1".into(),
            }
            .encode(),
        )
    };
    state.apply(backend("c2", "10.2.1.11"));
    state.apply(backend("c2", "10.1.1.99")); // inside c1: rejected
    state.apply(backend("c1", "10.1.1.11")); // this cluster's: the local source's business
    state.apply(backend("c9", "10.9.1.11")); // unknown cluster
    assert!(state.take_services_changed());
    let remote = state.remote_backends("shop", "web");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(
        (remote[0].cluster_id, remote[0].ip, remote[0].port),
        (2, "10.2.1.11".parse().unwrap(), 8080)
    );
    assert_eq!(
        state.counters.rejected.get(&("c2".to_string(), "backend")),
        Some(&1)
    );
    state.apply(Update::Delete {
        key: keys::backend(
            "shop",
            "web",
            "c2",
            "http.tcp",
            "10.2.1.11".parse().unwrap(),
            8080,
        ),
    });
    assert!(state.remote_backends("shop", "web").is_empty());
}
