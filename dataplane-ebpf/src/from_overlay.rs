//! Everything other nodes tunnel to this one. The inner source must belong
//! to the cluster (VNI) and node (outer source IP) that sent the packet,
//! according to the ipcache; otherwise it is spoofed and dropped. The
//! source identity found there is what the destination's ingress policy is
//! checked against.

use aya_ebpf::{bindings::bpf_tunnel_key, helpers::bpf_skb_get_tunnel_key, programs::TcContext};
use dataplane_common::{Direction, DropReason};

use crate::{
    lb, maps, parse, route,
    verdict::{self, Drop, Flow},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Drop> {
    let node = maps::node_config().ok_or(Drop::new(DropReason::NotConfigured))?;
    let local = node.cluster_id;
    let Some(ip) = parse::ipv4(ctx)? else {
        let flow = Flow::new().clusters(0, local);
        return Ok(verdict::to_stack(ctx, Direction::Ingress, &flow));
    };

    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the key lives on the stack for the duration of the call.
    let ret = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if ret != 0 {
        let flow = Flow::new().clusters(0, local).packet(&ip, None);
        return Err(flow.drop(DropReason::NoTunnelKey));
    }
    let vni = key.tunnel_id;
    // SAFETY: IPv4 tunnels fill the IPv4 member of the union.
    let outer_src = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();

    let claimed = Flow::new().clusters(vni as u16, local).packet(&ip, None);
    let Some(source) = maps::ipcache_v4(ip.src) else {
        return Err(claimed.drop(DropReason::UnknownTunnelSource));
    };
    if source.cluster_id as u32 != vni || source.tunnel_endpoint != outer_src {
        let flow = claimed.identities(source.identity, 0);
        return Err(flow.drop(DropReason::SpoofedSource));
    }

    // A reply in a connection tracked here: translated back to the service
    // address if it was balanced, and past policy.
    let l4 = parse::l4(ctx, &ip)?;
    let mut reply = false;
    if let Some(l4) = &l4 {
        reply = lb::translate_reply(ctx, &ip, l4)?.is_some();
    }

    let Some(endpoint) = maps::endpoint_v4(ip.dst) else {
        let flow = Flow::new()
            .clusters(source.cluster_id, local)
            .identities(source.identity, 0)
            .packet(&ip, l4.as_ref());
        return Ok(verdict::to_stack(ctx, Direction::Ingress, &flow));
    };
    route::from_remote_to_local_pod(ctx, &ip, l4.as_ref(), reply, source, endpoint, local)
}
