//! Per-node settings the programs need, kept in a one-entry array map so the
//! agent can change them without reloading programs.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    /// This node's underlay IPv4, network order.
    pub node_ip: [u8; 4],
    /// Interface index of the VXLAN collect_md device.
    pub tunnel_ifindex: u32,
    /// This node's cluster id; it is the VNI of every packet the node tunnels.
    pub cluster_id: u16,
    /// One forwarded packet in this many (on average) is sent as a flow
    /// event; 0 sends none. Drops are always sent.
    pub forward_sample: u16,
    /// Slots per service in the Maglev table (a prime).
    pub maglev_table_size: u32,
    /// The largest IPv4 packet a pod may tunnel to another node: the
    /// underlay's MTU less the tunnel's overhead. Larger ones are answered
    /// with ICMP "fragmentation needed", and TCP SYNs leaving for other
    /// nodes have their MSS clamped to fit. 0: not known yet, not checked.
    pub path_mtu: u16,
    /// The underlay's MTU: the largest packet a pod may send to another
    /// node natively (unencapsulated). 0: not known yet, not checked.
    pub underlay_mtu: u16,
}

const _: () = assert!(size_of::<NodeConfig>() == 20);
