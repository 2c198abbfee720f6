//! Everything the uplink receives, where natively routed packets from
//! other nodes arrive unencapsulated. Only packets to pods of this node are
//! this program's business; everything else (the node's own traffic, VXLAN
//! to the tunnel device) goes on untouched. A packet from a mesh pod must
//! come from a cluster routed natively with this one, and, as far as the
//! underlay lets it be checked, by the way it would be answered: its
//! Ethernet source is the next hop this node's FIB gives towards the source
//! address (on a flat L2 underlay the node owning it, across a router the
//! router).
//! Then replies are translated back to their service address, the
//! destination's ingress policy is checked with the source identity the
//! ipcache gives, and the packet is delivered into the pod.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    programs::TcContext,
};
use dataplane_common::{DropReason, NodeConfig};

use crate::{
    lb, maps,
    parse::{self, EthHdr, Ipv4},
    route,
    verdict::{Drop, Flow, PASS},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Drop> {
    // The node's own traffic (etcd among it) never depends on this program.
    let Some(node) = maps::node_config() else {
        return Ok(PASS);
    };
    let local = node.cluster_id;
    let Ok(Some(ip)) = parse::ipv4(ctx) else {
        return Ok(PASS);
    };
    let Some(endpoint) = maps::endpoint_v4(ip.dst) else {
        return Ok(PASS);
    };
    // From outside the mesh: the stack and to_pod decide (the world).
    let Some(source) = maps::ipcache_v4(ip.src) else {
        return Ok(PASS);
    };
    let claimed = Flow::new()
        .clusters(source.cluster_id, local)
        .identities(source.identity, endpoint.identity)
        .packet(&ip, None);
    // Only a natively routed cluster's pods send unencapsulated (this
    // node's own pods never arrive here).
    if !source.is_native() || !from_next_hop(ctx, node, &ip)? {
        return Err(claimed.drop(DropReason::SpoofedSource));
    }

    let l4 = parse::l4(ctx, &ip)?;
    let mut reply = false;
    if let Some(l4) = &l4 {
        reply = lb::translate_reply(ctx, &ip, l4)?.is_some();
    }
    route::from_remote_to_local_pod(ctx, &ip, l4.as_ref(), reply, source, endpoint, local)
}

/// Whether the packet's Ethernet source is the next hop this node's FIB
/// gives towards its source address, out of the interface it came in on:
/// a reverse-path check at layer 2. On a flat L2 underlay with direct
/// routes that next hop is the node owning the source; across a router, the
/// router (which must then be trusted not to forward spoofed sources). A
/// next hop whose address is not resolved yet cannot be checked and passes.
#[inline(always)]
fn from_next_hop(ctx: &TcContext, node: &NodeConfig, ip: &Ipv4) -> Result<bool, Drop> {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (ret, fib) = route::lookup(ctx, node.node_ip, ip.src, ifindex, true);
    match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let eth = parse::ptr_at::<EthHdr>(ctx, 0)?;
            // SAFETY: ptr_at checked the bounds.
            Ok(unsafe { (*eth).src } == fib.dmac)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(true),
        _ => Ok(false),
    }
}
