//! Outcomes of a program run: forward with a counted verdict, or drop with
//! a counted reason and an event. The one place where drops are turned
//! into `TC_ACT_SHOT`.

use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::bpf_ktime_get_ns, programs::TcContext};
use dataplane_common::{Direction, DropReason, FlowEvent, Verdict};

use crate::{
    maps::EVENTS,
    metrics,
    parse::{Ipv4, L4},
};

/// `TC_ACT_UNSPEC`: hand the packet on (to the next TCX program, then the
/// stack), so fleetnet chains politely after or before a cluster's CNI.
pub const PASS: i32 = aya_ebpf::bindings::TC_ACT_UNSPEC;

/// Why a packet is dropped, and what is known of the flow at that point:
/// the event the agent receives.
#[derive(Clone, Copy)]
pub struct Drop {
    pub reason: DropReason,
    pub event: FlowEvent,
}

impl Drop {
    #[inline(always)]
    pub fn new(reason: DropReason) -> Self {
        Self {
            reason,
            event: FlowEvent::default(),
        }
    }

    #[inline(always)]
    pub const fn clusters(mut self, src: u16, dst: u16) -> Self {
        self.event.src_cluster = src;
        self.event.dst_cluster = dst;
        self
    }

    #[inline(always)]
    pub const fn identities(mut self, src: u32, dst: u32) -> Self {
        self.event.src_identity = src;
        self.event.dst_identity = dst;
        self
    }

    /// Addresses, protocol and (when known) ports of the packet.
    #[inline(always)]
    pub fn flow(mut self, ip: &Ipv4, l4: Option<&L4>) -> Self {
        self.event.src = ip.src;
        self.event.dst = ip.dst;
        self.event.protocol = ip.protocol;
        if let Some(l4) = l4 {
            self.event.src_port = l4.src_port;
            self.event.dst_port = l4.dst_port;
        }
        self
    }
}

impl From<DropReason> for Drop {
    #[inline(always)]
    fn from(reason: DropReason) -> Self {
        Self::new(reason)
    }
}

/// Counts a drop, sends its event to the agent, and tells TC to discard
/// the packet. A full event ring loses the event, never the count.
#[inline(always)]
pub fn drop(ctx: &TcContext, drop: Drop, direction: Direction) -> i32 {
    let mut event = drop.event;
    metrics::count(
        drop.reason as u8,
        direction,
        event.src_cluster,
        event.dst_cluster,
        ctx.len(),
    );
    event.reason = drop.reason as u8;
    event.direction = direction as u8;
    // SAFETY: plain helper call.
    event.timestamp = unsafe { bpf_ktime_get_ns() };
    let _ = EVENTS.output::<FlowEvent>(&event, 0);
    TC_ACT_SHOT
}

/// Counts a forwarding verdict and returns `action` unchanged.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    verdict: Verdict,
    direction: Direction,
    src_cluster: u16,
    dst_cluster: u16,
    action: i32,
) -> i32 {
    metrics::count(
        verdict as u8,
        direction,
        src_cluster,
        dst_cluster,
        ctx.len(),
    );
    action
}

/// Counts a packet left to the kernel stack (and later TCX programs).
#[inline(always)]
pub fn to_stack(ctx: &TcContext, direction: Direction, src_cluster: u16, dst_cluster: u16) -> i32 {
    forward(
        ctx,
        Verdict::ToStack,
        direction,
        src_cluster,
        dst_cluster,
        PASS,
    )
}
