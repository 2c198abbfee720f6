//! Everything a local pod sends: check that the pod sends from its own
//! address, then deliver locally, tunnel to the owning node, or leave it to
//! the stack.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Direction, DropReason};

use crate::{
    lb, maps, parse, route,
    verdict::{self, Drop},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Drop> {
    let node = maps::node_config().ok_or(Drop::new(DropReason::NotConfigured))?;
    let local = node.cluster_id;
    let Some(ip) = parse::ipv4(ctx)? else {
        // ARP, IPv6 and the rest are the stack's business.
        return Ok(verdict::to_stack(ctx, Direction::Egress, local, 0));
    };

    // A pod may only send from an address it owns, on its own interface.
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match maps::endpoint_v4(ip.src) {
        Some(source) if source.ifindex == ifindex => {}
        _ => return Err(Drop::new(DropReason::InvalidSource).clusters(local, 0)),
    }

    // Load balancing: a reply from a local backend gets its service address
    // back as source; a packet to a service frontend goes to a backend.
    let mut ip = ip;
    if let Some(l4) = parse::l4(ctx, &ip)? {
        if let Some(service) = lb::translate_reply(ctx, &ip, &l4)? {
            ip.src = service;
        } else if let Some(backend) =
            lb::balance(ctx, node, &ip, &l4).map_err(|drop| drop.clusters(local, 0))?
        {
            ip.dst = backend;
        }
    }

    // A packet about to expire goes to the stack, which answers with ICMP
    // time exceeded.
    let routable = ip.ttl > 1;
    // Local pods first: their delivery needs no longest-prefix match.
    if routable && let Some(endpoint) = maps::endpoint_v4(ip.dst) {
        route::decrement_ttl(ctx)?;
        return route::to_local_pod(ctx, endpoint, Direction::Egress, local, local);
    }
    match maps::ipcache_v4(ip.dst) {
        Some(remote) if routable && !remote.is_local() => {
            route::decrement_ttl(ctx)?;
            route::to_tunnel(ctx, node, remote)
        }
        destination => {
            let dst_cluster = destination.map_or(0, |entry| entry.cluster_id);
            Ok(verdict::to_stack(
                ctx,
                Direction::Egress,
                local,
                dst_cluster,
            ))
        }
    }
}
