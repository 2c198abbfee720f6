//! Everything a local pod sends: check that the pod sends from its own
//! address, then deliver locally, tunnel to the owning node, or leave it to
//! the stack.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Direction, DropReason, Verdict};

use crate::{
    maps, parse, route,
    verdict::{self, Drop, PASS},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Drop> {
    let node = maps::node_config().ok_or(Drop::new(DropReason::NotConfigured))?;
    let local = node.cluster_id;
    let Some(ip) = parse::ipv4(ctx)? else {
        // ARP, IPv6 and the rest are the stack's business.
        return Ok(verdict::forward(
            ctx,
            Verdict::ToStack,
            Direction::Egress,
            local,
            0,
            PASS,
        ));
    };

    // A pod may only send from an address it owns, on its own interface.
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match maps::endpoint_v4(ip.src) {
        Some(source) if source.ifindex == ifindex => {}
        _ => return Err(Drop::new(DropReason::InvalidSource).clusters(local, 0)),
    }

    let destination = maps::ipcache_v4(ip.dst);
    let dst_cluster = destination.map_or(0, |entry| entry.cluster_id);
    if ip.ttl <= 1 {
        return Ok(verdict::forward(
            ctx,
            Verdict::ToStack,
            Direction::Egress,
            local,
            dst_cluster,
            PASS,
        ));
    }

    if let Some(endpoint) = maps::endpoint_v4(ip.dst) {
        route::decrement_ttl(ctx, &ip)?;
        return route::to_local_pod(ctx, endpoint, Direction::Egress, local, local);
    }
    match destination {
        Some(remote) if !remote.is_local() => {
            route::decrement_ttl(ctx, &ip)?;
            route::to_tunnel(ctx, node, remote)
        }
        _ => Ok(verdict::forward(
            ctx,
            Verdict::ToStack,
            Direction::Egress,
            local,
            dst_cluster,
            PASS,
        )),
    }
}
