//! An agent upgraded from a release that keyed its maps wider (20-byte
//! `IpKey`s, 24-byte frontends) replaces those maps, and finds the old
//! maps' endpoints, exact ipcache entries and frontends in the new ones
//! before its programs run: pods' packets are forwarded from the first on,
//! not dropped until the agent has listed its cluster and the mesh.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use dataplane_common::{
    IpKey, IpcacheEntry, ServiceInfo, ServiceKey, identity,
    maps::{ENDPOINTS, IPCACHE_HOSTS, PROG_FROM_POD, SERVICES},
    service::PROTO_TCP,
};
use fleetnet_agent::datapath::WideServiceKey;
use fleetnet_testing::{
    fleet_in_a_box,
    packet::{Frame, TCP_ACK},
    scenario::{self, OTHER_CLUSTER, OTHER_CLUSTER_NODE, POD_A, POD_OTHER_CLUSTER},
    testrun,
};

const TC_ACT_REDIRECT: i32 = 7;
const VIP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 10);

/// Pins a hash map of the wider layout at `path`, holding `entries`.
fn pin_wide<K: Pod, V: Pod>(path: &Path, entries: &[(K, V)]) {
    let mut map = HashMap::<MapData, K, V>::create(64, 0).expect("creating a map");
    for (key, value) in entries {
        map.insert(key, value, 0).expect("writing the map");
    }
    map.pin(path).expect("pinning the map");
}

#[test]
fn entries_of_maps_keyed_wider_are_carried_into_the_new_maps() {
    fleetnet_testing::require_root();
    let pins = Path::new("/sys/fs/bpf/fleetnet").join(fleet_in_a_box::unique_name());
    std::fs::create_dir_all(&pins).unwrap();
    let pod_a = scenario::node().maps.endpoints().unwrap()[&POD_A.octets()];
    let remote = IpcacheEntry {
        identity: identity::make(OTHER_CLUSTER, 0x200),
        tunnel_endpoint: OTHER_CLUSTER_NODE,
        cluster_id: OTHER_CLUSTER,
        flags: 0,
    };
    let frontend = ServiceInfo {
        service_id: 1,
        backend_count: 1,
        flags: 0,
    };
    pin_wide(&pins.join(ENDPOINTS), &[(IpKey::v4(POD_A.octets()), pod_a)]);
    pin_wide(
        &pins.join(IPCACHE_HOSTS),
        &[(IpKey::v4(POD_OTHER_CLUSTER.octets()), remote)],
    );
    let wide_frontend = WideServiceKey {
        vip: IpKey::v4(VIP.octets()),
        port: 80u16.to_be(),
        protocol: PROTO_TCP,
        _pad: 0,
    };
    pin_wide(&pins.join(SERVICES), &[(wide_frontend, frontend)]);

    let mut datapath = testrun::load_at(Some(&pins));
    let maps = &mut datapath.maps;
    assert_eq!(
        maps.endpoints().unwrap(),
        BTreeMap::from([(POD_A.octets(), pod_a)])
    );
    assert_eq!(maps.ipcache_lookup(POD_OTHER_CLUSTER), Some(remote));
    let narrow_frontend = ServiceKey {
        vip: VIP.octets(),
        port: 80u16.to_be(),
        protocol: PROTO_TCP,
        _pad: 0,
    };
    assert_eq!(
        maps.services().unwrap(),
        BTreeMap::from([(narrow_frontend, frontend)])
    );

    // With only its node's settings written, the first packet from pod A
    // to the remote pod is tunnelled, not dropped as from an unknown
    // source or to an unknown peer.
    maps.set_node_config(scenario::node_config()).unwrap();
    let packet = Frame::tcp(POD_A, 40000, POD_OTHER_CLUSTER, 80, TCP_ACK).build();
    let outcome = testrun::run(&mut datapath, PROG_FROM_POD, &packet);
    assert_eq!(outcome.action, TC_ACT_REDIRECT, "tunnelled to its node");

    drop(datapath);
    std::fs::remove_dir_all(&pins).unwrap();
}
