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
    /// Node-local endpoint number, used as the policy key in later stages.
    pub endpoint_id: u16,
    /// Reserved; zero.
    pub flags: u16,
}

const _: () = assert!(size_of::<EndpointInfo>() == 24);
const _: () = assert!(core::mem::offset_of!(EndpointInfo, mac) == 8);
const _: () = assert!(core::mem::offset_of!(EndpointInfo, endpoint_id) == 20);
