//! Outcomes of a program run: forward with a counted verdict, or drop with
//! a counted reason. Either way the packet's [`Flow`] is what is counted
//! (by protocol and clusters) and what is sent to the agent as an event:
//! every drop, and forwarded packets as sampled. The one place where drops
//! are turned into `TC_ACT_SHOT`.

use aya_ebpf::{
    bindings::{BPF_RB_NO_WAKEUP, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use dataplane_common::{Direction, DropReason, FlowEvent, Verdict};

use crate::{
    maps::{self, EVENTS},
    metrics,
    parse::{Ipv4, L4},
};

/// `TC_ACT_UNSPEC`: hand the packet on (to the next TCX program, then the
/// stack), so fleetnet chains politely after or before a cluster's CNI.
pub const PASS: i32 = aya_ebpf::bindings::TC_ACT_UNSPEC;

/// What is known of a packet where it is decided: addresses, ports and
/// protocol, and the identities and clusters of both ends.
#[derive(Clone, Copy, Default)]
pub struct Flow(FlowEvent);

impl Flow {
    #[inline(always)]
    pub fn new() -> Self {
        Self::default()
    }

    #[inline(always)]
    pub const fn clusters(mut self, src: u16, dst: u16) -> Self {
        self.0.src_cluster = src;
        self.0.dst_cluster = dst;
        self
    }

    #[inline(always)]
    pub const fn identities(mut self, src: u32, dst: u32) -> Self {
        self.0.src_identity = src;
        self.0.dst_identity = dst;
        self
    }

    /// Addresses, protocol and (when known) ports of the packet.
    #[inline(always)]
    pub fn packet(mut self, ip: &Ipv4, l4: Option<&L4>) -> Self {
        self.0.src = ip.src;
        self.0.dst = ip.dst;
        self.0.protocol = ip.protocol;
        if let Some(l4) = l4 {
            self.0.src_port = l4.src_port;
            self.0.dst_port = l4.dst_port;
        }
        self
    }

    #[inline(always)]
    pub fn drop(self, reason: DropReason) -> Drop {
        Drop { reason, flow: self }
    }
}

/// Why a packet is dropped, and what is known of its flow.
#[derive(Clone, Copy)]
pub struct Drop {
    pub reason: DropReason,
    pub flow: Flow,
}

impl Drop {
    #[inline(always)]
    pub fn new(reason: DropReason) -> Self {
        Flow::new().drop(reason)
    }

    /// The flow, for a drop raised where it was not known.
    #[inline(always)]
    pub fn of(mut self, flow: Flow) -> Self {
        self.flow = flow;
        self
    }
}

impl From<DropReason> for Drop {
    #[inline(always)]
    fn from(reason: DropReason) -> Self {
        Self::new(reason)
    }
}

/// How an event is sent: not at all, or to the ring, waking the agent
/// (drops) or not (sampled forwards, which the agent collects when a drop
/// wakes it or on its timer: a wake-up costs more than the event).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Send {
    No,
    Wake,
    Quiet,
}

/// Counts a drop, sends its event to the agent, and tells TC to discard
/// the packet. A policy denial is told in the direction of the policy
/// that denied it: a pod's ingress policy denying a pod of the same node
/// does so in from-pod, on the sender's egress path, and is still an
/// ingress denial, as it is across nodes.
#[inline(always)]
pub fn drop(ctx: &TcContext, drop: Drop, direction: Direction) -> i32 {
    let direction = match drop.reason {
        DropReason::PolicyDeniedIngress => Direction::Ingress,
        DropReason::PolicyDeniedEgress => Direction::Egress,
        _ => direction,
    };
    record(ctx, drop.reason as u8, direction, &drop.flow, Send::Wake);
    TC_ACT_SHOT
}

/// Counts a forwarding verdict (and sends the flow as an event when
/// sampled) and returns `action` unchanged.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    verdict: Verdict,
    direction: Direction,
    flow: &Flow,
    action: i32,
) -> i32 {
    let sample = maps::node_config().map_or(0, |node| node.forward_sample);
    // One in `sample` at random: a 32-bit random number times `sample`
    // overflows into the high word unless it is below 2^32 / sample (a
    // multiply instead of a division).
    // SAFETY: plain helper call.
    let sampled =
        sample != 0 && (u64::from(unsafe { bpf_get_prandom_u32() }) * u64::from(sample)) >> 32 == 0;
    let send = if sampled { Send::Quiet } else { Send::No };
    record(ctx, verdict as u8, direction, flow, send);
    action
}

/// Counts a packet left to the kernel stack (and later TCX programs).
#[inline(always)]
pub fn to_stack(ctx: &TcContext, direction: Direction, flow: &Flow) -> i32 {
    forward(ctx, Verdict::ToStack, direction, flow, PASS)
}

/// Counts an outcome, and sends the flow when asked. A full event ring
/// loses the event (counted), never the count.
#[inline(always)]
fn record(ctx: &TcContext, reason: u8, direction: Direction, flow: &Flow, send: Send) {
    let mut event = flow.0;
    metrics::count(
        reason,
        direction,
        event.protocol,
        event.src_cluster,
        event.dst_cluster,
        ctx.len(),
    );
    if send == Send::No {
        return;
    }
    event.reason = reason;
    event.direction = direction as u8;
    // SAFETY: plain helper call.
    event.timestamp = unsafe { bpf_ktime_get_ns() };
    let flags = if send == Send::Quiet {
        BPF_RB_NO_WAKEUP as u64
    } else {
        0
    };
    if EVENTS.output::<FlowEvent>(&event, flags).is_err() {
        metrics::count_lost_event();
    }
}
