//! Outcomes of a program run: forward with a counted verdict, or drop with
//! a counted reason. The one place where drops are turned into `TC_ACT_SHOT`.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use dataplane_common::{Direction, DropReason, Verdict};

use crate::metrics;

/// `TC_ACT_UNSPEC`: hand the packet on (to the next TCX program, then the
/// stack), so fleetnet chains politely after or before a cluster's CNI.
pub const PASS: i32 = aya_ebpf::bindings::TC_ACT_UNSPEC;

/// Why a packet is dropped, with the clusters involved when known.
#[derive(Clone, Copy)]
pub struct Drop {
    pub reason: DropReason,
    pub src_cluster: u16,
    pub dst_cluster: u16,
}

impl Drop {
    #[inline(always)]
    pub const fn new(reason: DropReason) -> Self {
        Self {
            reason,
            src_cluster: 0,
            dst_cluster: 0,
        }
    }

    #[inline(always)]
    pub const fn clusters(mut self, src: u16, dst: u16) -> Self {
        self.src_cluster = src;
        self.dst_cluster = dst;
        self
    }
}

impl From<DropReason> for Drop {
    #[inline(always)]
    fn from(reason: DropReason) -> Self {
        Self::new(reason)
    }
}

/// Counts a drop and tells TC to discard the packet.
#[inline(always)]
pub fn drop(ctx: &TcContext, drop: Drop, direction: Direction) -> i32 {
    metrics::count(
        drop.reason as u8,
        direction,
        drop.src_cluster,
        drop.dst_cluster,
        ctx.len(),
    );
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
