//! Flow events the datapath sends to the agent through a ring buffer:
//! every drop, with who it was between.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` when it happened.
    pub timestamp: u64,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_identity: u32,
    pub dst_identity: u32,
    pub src_cluster: u16,
    pub dst_cluster: u16,
    /// Ports in network byte order (ICMP echo: the id as source port).
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// A [`crate::Verdict`] or [`crate::DropReason`] code.
    pub reason: u8,
    /// A [`crate::Direction`] code.
    pub direction: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(size_of::<FlowEvent>() == 40);
