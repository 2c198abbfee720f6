//! What the maps should contain, computed from the agent's view of the
//! mesh. Pure functions: the agent reconciles maps against their result.

use std::collections::BTreeMap;

use dataplane_common::{EndpointInfo, IpcacheEntry, NodeConfig, identity};
use ipnet::Ipv4Net;

use crate::{
    config::{AgentConfig, PodConfig},
    netlink::PodInterface,
};

pub fn node_config(config: &AgentConfig, tunnel_ifindex: u32) -> NodeConfig {
    NodeConfig {
        node_ip: config.node.ip.octets(),
        tunnel_ifindex,
        cluster_id: config.cluster.id,
        flags: 0,
    }
}

/// Local pod CIDR and pods (tunnel endpoint zero), and every peer's pod
/// CIDR pointing at that peer's underlay IP.
pub fn ipcache(config: &AgentConfig) -> BTreeMap<Ipv4Net, IpcacheEntry> {
    let local = |identity| IpcacheEntry {
        identity,
        tunnel_endpoint: [0; 4],
        cluster_id: config.cluster.id,
        flags: 0,
    };
    let mut entries = BTreeMap::new();
    entries.insert(config.node.pod_cidr, local(identity::UNMANAGED));
    for pod in &config.pods {
        entries.insert(host_net(pod), local(identity::UNMANAGED));
    }
    for peer in &config.peers {
        entries.insert(
            peer.pod_cidr,
            IpcacheEntry {
                identity: identity::UNMANAGED,
                tunnel_endpoint: peer.ip.octets(),
                cluster_id: peer.cluster_id,
                flags: 0,
            },
        );
    }
    entries
}

/// One endpoint per local pod; endpoint ids follow the pods' order.
pub fn endpoints(pods: &[(PodConfig, PodInterface)]) -> BTreeMap<[u8; 4], EndpointInfo> {
    pods.iter()
        .zip(1u16..)
        .map(|((pod, interface), endpoint_id)| {
            let info = EndpointInfo {
                ifindex: interface.host.index,
                identity: identity::UNMANAGED,
                mac: interface.pod_mac,
                node_mac: interface.host.mac,
                endpoint_id,
                flags: 0,
            };
            (pod.ip.octets(), info)
        })
        .collect()
}

fn host_net(pod: &PodConfig) -> Ipv4Net {
    Ipv4Net::new(pod.ip, 32).expect("/32 is a valid prefix")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Link;

    fn config() -> AgentConfig {
        AgentConfig::parse(
            "
cluster: { name: c1, id: 7 }
node: { name: n1, ip: 198.18.0.11, pod-cidr: 10.1.1.0/24 }
pods: [ { name: a, ip: 10.1.1.2 }, { name: b, ip: 10.1.1.3 } ]
peers:
  - { cluster: c2, cluster-id: 9, node: n1, ip: 198.18.0.21, pod-cidr: 10.2.1.0/24 }
",
        )
        .unwrap()
    }

    #[test]
    fn ipcache_points_peers_at_their_node_and_keeps_local_entries_local() {
        let entries = ipcache(&config());
        assert_eq!(entries.len(), 4);
        let peer = entries[&"10.2.1.0/24".parse().unwrap()];
        assert_eq!(peer.tunnel_endpoint, [198, 18, 0, 21]);
        assert_eq!(peer.cluster_id, 9);
        let pod = entries[&"10.1.1.3/32".parse().unwrap()];
        assert!(pod.is_local());
        assert_eq!(pod.cluster_id, 7);
        assert!(entries[&"10.1.1.0/24".parse().unwrap()].is_local());
    }

    #[test]
    fn endpoints_carry_both_macs_and_distinct_ids() {
        let config = config();
        let interface = |index, last| PodInterface {
            host: Link::for_tests(index, "veth", [2, 0, 0, 0, 0, last]),
            pod_mac: [4, 0, 0, 0, 0, last],
        };
        let pods = vec![
            (config.pods[0].clone(), interface(10, 1)),
            (config.pods[1].clone(), interface(11, 2)),
        ];
        let endpoints = endpoints(&pods);
        let a = endpoints[&[10, 1, 1, 2]];
        let b = endpoints[&[10, 1, 1, 3]];
        assert_eq!(
            (a.ifindex, a.mac, a.node_mac),
            (10, [4, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 1])
        );
        assert_ne!(a.endpoint_id, b.endpoint_id);
        assert_eq!(node_config(&config, 5).cluster_id, 7);
        assert_eq!(node_config(&config, 5).node_ip, [198, 18, 0, 11]);
    }
}
