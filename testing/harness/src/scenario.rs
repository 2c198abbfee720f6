//! The node the packet tests and the per-packet benchmark run against:
//! node 198.18.1.10 of cluster 1 with local pods A and B, another node of
//! cluster 1 (10.1.2.0/24) and a node of cluster 2 (10.2.1.0/24).

use std::net::Ipv4Addr;

use dataplane_common::{EndpointInfo, IpcacheEntry, MetricsKey, NodeConfig, identity};
use fleetnet_agent::datapath::Datapath;

use crate::testrun;

pub const LOCAL_CLUSTER: u16 = 1;
pub const OTHER_CLUSTER: u16 = 2;
pub const NODE_IP: [u8; 4] = [198, 18, 1, 10];
pub const SAME_CLUSTER_NODE: [u8; 4] = [198, 18, 1, 11];
pub const OTHER_CLUSTER_NODE: [u8; 4] = [198, 18, 2, 10];
pub const TUNNEL_IFINDEX: u32 = 42;
/// What a 1500-byte underlay carries with VXLAN's 50 bytes.
pub const PATH_MTU: u16 = 1450;

/// The sending pod. BPF_PROG_TEST_RUN runs packets on `lo`, so pod A
/// "sits" on ifindex 1.
pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 10);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 11);
/// A second local pod on `lo` (ifindex 1), so it can also send in tests:
/// the local backend of the service tests.
pub const POD_C: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 12);
pub const POD_C_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0c];
pub const POD_B_IFINDEX: u32 = 77;
pub const POD_B_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0b];
pub const POD_B_GATEWAY_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x0b];
pub const POD_SAME_CLUSTER: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 10);
pub const POD_OTHER_CLUSTER: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 10);
/// Outside the mesh.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// A private datapath with the maps seeded for this node.
pub fn node() -> Datapath {
    node_at(None)
}

/// Like [`node`], with the maps pinned under `pin_dir` if given.
pub fn node_at(pin_dir: Option<&std::path::Path>) -> Datapath {
    node_sized(testrun::TEST_SIZES, pin_dir)
}

/// Like [`node_at`], with maps of `sizes`.
pub fn node_sized(
    sizes: fleetnet_agent::datapath::MapSizes,
    pin_dir: Option<&std::path::Path>,
) -> Datapath {
    let mut datapath = testrun::load_sized(sizes, pin_dir);
    let maps = &mut datapath.maps;
    maps.set_node_config(node_config())
        .expect("writing the node config");
    let entry = |tunnel_endpoint, cluster_id| IpcacheEntry {
        identity: identity::UNMANAGED,
        tunnel_endpoint,
        cluster_id,
        flags: 0,
    };
    for (cidr, tunnel, cluster) in [
        ("10.1.1.0/24", [0; 4], LOCAL_CLUSTER),
        ("10.1.2.0/24", SAME_CLUSTER_NODE, LOCAL_CLUSTER),
        ("10.2.1.0/24", OTHER_CLUSTER_NODE, OTHER_CLUSTER),
    ] {
        maps.upsert_ipcache(cidr.parse().expect("valid CIDR"), entry(tunnel, cluster))
            .expect("writing the ipcache");
    }
    // Pod number n has identity 0x100 + n and policy group n.
    let endpoint = |ifindex, mac, node_mac, number| EndpointInfo {
        ifindex,
        identity: identity::make(LOCAL_CLUSTER, 0x100 + number),
        mac,
        node_mac,
        policy_id: number,
        flags: 0,
    };
    let pod_a = endpoint(
        1,
        [0x02, 0xaa, 0, 0, 0, 0x0a],
        [0x02, 0xfe, 0, 0, 0, 0x0a],
        1,
    );
    let pod_b = endpoint(POD_B_IFINDEX, POD_B_MAC, POD_B_GATEWAY_MAC, 2);
    maps.upsert_endpoint(POD_A.octets(), pod_a)
        .expect("writing endpoints");
    maps.upsert_endpoint(POD_B.octets(), pod_b)
        .expect("writing endpoints");
    let pod_c = endpoint(1, POD_C_MAC, [0x02, 0xfe, 0, 0, 0, 0x0c], 3);
    maps.upsert_endpoint(POD_C.octets(), pod_c)
        .expect("writing endpoints");
    datapath
}

/// This node's settings, as its agent writes them.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        node_ip: NODE_IP,
        tunnel_ifindex: TUNNEL_IFINDEX,
        cluster_id: LOCAL_CLUSTER,
        forward_sample: 0,
        maglev_table_size: testrun::TEST_SIZES.maglev_table_size,
        path_mtu: PATH_MTU,
        underlay_mtu: PATH_MTU + 50,
    }
}

/// Packets the datapath counted under the metrics keys `matches` accepts.
pub fn packets_counted(datapath: &Datapath, matches: impl Fn(&MetricsKey) -> bool) -> u64 {
    datapath
        .maps
        .metrics()
        .unwrap()
        .iter()
        .filter(|(key, _)| matches(key))
        .map(|(_, value)| value.packets)
        .sum()
}
