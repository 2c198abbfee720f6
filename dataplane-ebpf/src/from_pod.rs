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

    // Local pods first: their delivery needs no longest-prefix match.
    let local_pod = maps::endpoint_v4(ip.dst);
    let remote = match local_pod {
        Some(_) => None,
        None => maps::ipcache_v4(ip.dst).filter(|entry| !entry.is_local()),
    };
    if ip.ttl <= 1 || (local_pod.is_none() && remote.is_none()) {
        let dst_cluster = match (local_pod, remote) {
            (Some(_), _) => local,
            (_, Some(entry)) => entry.cluster_id,
            _ => 0,
        };
        return Ok(verdict::forward(
            ctx,
            Verdict::ToStack,
            Direction::Egress,
            local,
            dst_cluster,
            PASS,
        ));
    }
    route::decrement_ttl(ctx)?;
    match (local_pod, remote) {
        (Some(endpoint), _) => route::to_local_pod(ctx, endpoint, Direction::Egress, local, local),
        (_, Some(entry)) => route::to_tunnel(ctx, node, entry),
        _ => Ok(PASS),
    }
}
