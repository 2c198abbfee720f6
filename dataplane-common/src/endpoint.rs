//! Local endpoints: the pods on this node that the datapath delivers to
//! directly with `bpf_redirect_peer`. Keyed by [`crate::IpKey`].

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Interface index of the pod's host-side veth.
    pub ifindex: u32,
    /// Security identity of the pod.
    pub identity: u32,
    /// MAC address of the pod's own interface (destination on delivery).
    pub mac: [u8; 6],
    /// MAC address of the host-side veth (source on delivery: the pod's gateway).
    pub node_mac: [u8; 6],
    /// The node-local policy group the endpoint belongs to: the first part
    /// of its policy keys. Endpoints selected by the same policies share
    /// one set of entries.
    pub policy_id: u16,
    /// [`EndpointInfo::INGRESS_ENFORCED`] and [`EndpointInfo::EGRESS_ENFORCED`].
    pub flags: u16,
}

impl EndpointInfo {
    /// A policy selects the pod for ingress: what no entry allows is denied.
    pub const INGRESS_ENFORCED: u16 = 1;
    /// A policy selects the pod for egress.
    pub const EGRESS_ENFORCED: u16 = 2;

    pub const fn enforces(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

const _: () = assert!(size_of::<EndpointInfo>() == 24);
const _: () = assert!(core::mem::offset_of!(EndpointInfo, mac) == 8);
const _: () = assert!(core::mem::offset_of!(EndpointInfo, policy_id) == 20);
