//! fleetnet's eBPF datapath.
//!
//! Entry points are thin: each calls a `run` function that returns
//! `Ok(tc action)` or `Err(Drop)`, and every drop goes through
//! [`verdict::drop`], which counts the reason. The real work lives in the
//! modules named after what they do.
#![no_std]
#![no_main]

mod checksum;
mod conntrack;
mod from_overlay;
mod from_pod;
mod from_underlay;
mod lb;
mod maps;
mod metrics;
mod mtu;
mod nat;
mod parse;
mod policy;
mod route;
mod to_pod;
mod verdict;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use dataplane_common::Direction;

/// TC ingress of each pod's host-side veth: everything a pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    from_pod_until::<{ from_pod::ALL }>(&ctx)
}

#[inline(always)]
fn from_pod_until<const UNTIL: u8>(ctx: &TcContext) -> i32 {
    match from_pod::run::<UNTIL>(ctx) {
        Ok(action) => action,
        Err(drop) => verdict::drop(ctx, drop, Direction::Egress),
    }
}

// from_pod cut short after each stage, for the benchmark's per-stage
// breakdown (dataplane_common::maps::PROG_FROM_POD_STAGES); loaded only
// by it, never attached.
#[classifier]
pub fn from_pod_s1(ctx: TcContext) -> i32 {
    from_pod_until::<1>(&ctx)
}
#[classifier]
pub fn from_pod_s2(ctx: TcContext) -> i32 {
    from_pod_until::<2>(&ctx)
}
#[classifier]
pub fn from_pod_s3(ctx: TcContext) -> i32 {
    from_pod_until::<3>(&ctx)
}
#[classifier]
pub fn from_pod_s4(ctx: TcContext) -> i32 {
    from_pod_until::<4>(&ctx)
}
#[classifier]
pub fn from_pod_s5(ctx: TcContext) -> i32 {
    from_pod_until::<5>(&ctx)
}
#[classifier]
pub fn from_pod_s6(ctx: TcContext) -> i32 {
    from_pod_until::<6>(&ctx)
}
#[classifier]
pub fn from_pod_s7(ctx: TcContext) -> i32 {
    from_pod_until::<7>(&ctx)
}

/// TC ingress of the VXLAN collect_md device: everything other nodes tunnel to us.
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    match from_overlay::run(&ctx) {
        Ok(action) => action,
        Err(drop) => verdict::drop(&ctx, drop, Direction::Ingress),
    }
}

/// TC ingress of the uplink: natively routed packets other nodes send to
/// this node's pods (everything else goes on).
#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    match from_underlay::run(&ctx) {
        Ok(action) => action,
        Err(drop) => verdict::drop(&ctx, drop, Direction::Ingress),
    }
}

/// TC egress of each pod's host-side veth: what the kernel stack delivers
/// into the pod (host and outside traffic), checked against its ingress policy.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    match to_pod::run(&ctx) {
        Ok(action) => action,
        Err(drop) => verdict::drop(&ctx, drop, Direction::Ingress),
    }
}

/// Does nothing: the floor against which per-packet costs are measured.
#[classifier]
pub fn floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
