//! Everything a local pod sends: check that the pod sends from its own
//! address; translate replies of tracked connections and balance packets to
//! service frontends; apply the pod's egress policy (and, for a pod on this
//! node, the destination's ingress policy); then deliver locally, tunnel to
//! the owning node (within the path's MTU, see [`crate::mtu`]), or leave it
//! to the stack.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Direction, DropReason, identity};

use crate::{
    lb, maps, mtu, parse, policy, route,
    verdict::{self, Drop, Flow},
};

/// How far a run goes: the whole program ([`ALL`]), or, for the
/// benchmark's per-stage breakdown, up to the end of stage N
/// ([`dataplane_common::maps::PROG_FROM_POD_STAGES`]), passing the packet
/// on there. A constant: the checks compile away.
pub const ALL: u8 = u8::MAX;

#[inline(always)]
pub fn run<const UNTIL: u8>(ctx: &TcContext) -> Result<i32, Drop> {
    let node = maps::node_config().ok_or(Drop::new(DropReason::NotConfigured))?;
    let local = node.cluster_id;
    let Some(ip) = parse::ipv4(ctx)? else {
        // ARP, IPv6 and the rest are the stack's business.
        let flow = Flow::new().clusters(local, 0);
        return Ok(verdict::to_stack(ctx, Direction::Egress, &flow));
    };
    if UNTIL == 1 {
        return Ok(verdict::PASS);
    }

    // A pod may only send from an address it owns, on its own interface.
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let source = match maps::endpoint_v4(ip.src) {
        Some(source) if source.ifindex == ifindex => *source,
        _ => {
            let flow = Flow::new().clusters(local, 0).packet(&ip, None);
            return Err(flow.drop(DropReason::InvalidSource));
        }
    };

    // Replies of tracked connections get their service address back (and
    // pass policy); packets to a service frontend go to a backend.
    // Policy sees the packet as translated: a backend, and its port.
    let mut ip = ip;
    let mut l4 = parse::l4(ctx, &ip)?;
    if UNTIL == 2 {
        return Ok(verdict::PASS);
    }
    let mut reply = false;
    if let Some(ports) = &mut l4 {
        if let Some(src) = lb::translate_reply(ctx, &ip, ports)? {
            ip.src = src;
            reply = true;
        } else if let Some(backend) = lb::balance(ctx, node, &ip, ports)
            .map_err(|drop| drop.of(Flow::new().clusters(local, 0).packet(&ip, Some(ports))))?
        {
            ip.dst = backend.addr;
            ports.dst_port = backend.port;
        }
    }
    if UNTIL == 3 {
        return Ok(verdict::PASS);
    }

    // Where it goes, and who is there.
    let local_pod = maps::endpoint_v4(ip.dst).copied();
    let remote = match local_pod {
        Some(_) => None,
        None => maps::ipcache_v4(ip.dst),
    };
    let (dst_identity, dst_cluster) = match (local_pod, remote) {
        (Some(pod), _) => (pod.identity, local),
        _ if ip.dst == node.node_ip => (identity::HOST, local),
        (_, Some(entry)) => (entry.identity, entry.cluster_id),
        _ => (identity::WORLD, 0),
    };
    let flow = Flow::new()
        .clusters(local, dst_cluster)
        .identities(source.identity, dst_identity)
        .packet(&ip, l4.as_ref());
    if UNTIL == 4 {
        return Ok(verdict::PASS);
    }

    // The sender's egress policy, then a local receiver's ingress policy.
    if !reply {
        if !policy::admit(&source, Direction::Egress, dst_identity, &ip, l4.as_ref()) {
            return Err(flow.drop(DropReason::PolicyDeniedEgress));
        }
        if let Some(pod) = &local_pod
            && !policy::admit(pod, Direction::Ingress, source.identity, &ip, l4.as_ref())
        {
            return Err(flow.drop(DropReason::PolicyDeniedIngress));
        }
    }
    if UNTIL == 5 {
        return Ok(verdict::PASS);
    }

    // A packet about to expire goes to the stack, which answers with ICMP
    // time exceeded.
    let routable = ip.ttl > 1;
    if routable && let Some(pod) = &local_pod {
        if UNTIL == 6 {
            return Ok(verdict::PASS);
        }
        route::decrement_ttl(ctx)?;
        if UNTIL == 7 {
            return route::to_local_pod::<false>(ctx, pod, Direction::Egress, &flow);
        }
        return route::to_local_pod::<true>(ctx, pod, Direction::Egress, &flow);
    }
    match remote {
        Some(remote) if routable && !remote.is_local() => {
            // Never fragmented on the way: too big is answered, and TCP
            // connections agree on segments that fit.
            let mtu = if remote.is_native() {
                node.underlay_mtu
            } else {
                node.path_mtu
            };
            if !mtu::fits(ctx, &ip, mtu)? {
                return Ok(mtu::answer_too_big(ctx, node, mtu, &source, &ip, &flow));
            }
            if let Some(l4) = &l4 {
                mtu::clamp_mss(ctx, &ip, l4, mtu)?;
            }
            if UNTIL == 6 {
                return Ok(verdict::PASS);
            }
            if remote.is_native() {
                return route::natively(ctx, &ip, &flow);
            }
            route::decrement_ttl(ctx)?;
            if UNTIL == 7 {
                return route::to_tunnel::<false>(ctx, node, remote, &flow);
            }
            route::to_tunnel::<true>(ctx, node, remote, &flow)
        }
        _ if UNTIL == 6 || UNTIL == 7 => Ok(verdict::PASS),
        _ => Ok(verdict::to_stack(ctx, Direction::Egress, &flow)),
    }
}
