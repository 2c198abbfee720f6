//! Everything the kernel stack delivers into a pod: traffic from the host
//! and from outside the mesh. (Pods and other nodes' pods reach a pod
//! through `bpf_redirect_peer`, which skips this hook; their ingress policy
//! was checked on the way.) The source identity is the host for this
//! node's address, the endpoint or ipcache entry of the source address, or
//! the world.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Direction, DropReason, EndpointInfo, Verdict, identity};

use crate::{
    lb, maps, parse, policy,
    verdict::{self, Drop, Flow, PASS},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Drop> {
    let node = maps::node_config().ok_or(Drop::new(DropReason::NotConfigured))?;
    let local = node.cluster_id;
    let deliver =
        |flow: Flow| verdict::forward(ctx, Verdict::FromStack, Direction::Ingress, &flow, PASS);
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(deliver(Flow::new().clusters(0, local)));
    };
    let Some(endpoint) = maps::endpoint_v4(ip.dst) else {
        return Ok(deliver(Flow::new().clusters(0, local).packet(&ip, None)));
    };
    let l4 = parse::l4(ctx, &ip)?;
    let packet = Flow::new().packet(&ip, l4.as_ref());
    let enforced = EndpointInfo::INGRESS_ENFORCED | EndpointInfo::EGRESS_ENFORCED;
    if endpoint.flags & enforced == 0 {
        return Ok(deliver(
            packet.clusters(0, local).identities(0, endpoint.identity),
        ));
    }

    if let Some(l4) = &l4
        && lb::translate_reply(ctx, &ip, l4)?.is_some()
    {
        return Ok(deliver(
            packet.clusters(0, local).identities(0, endpoint.identity),
        ));
    }
    let (src_identity, src_cluster) = if ip.src == node.node_ip {
        (identity::HOST, local)
    } else if let Some(pod) = maps::endpoint_v4(ip.src) {
        (pod.identity, local)
    } else if let Some(entry) = maps::ipcache_v4(ip.src) {
        (entry.identity, entry.cluster_id)
    } else {
        (identity::WORLD, 0)
    };
    let flow = packet
        .clusters(src_cluster, local)
        .identities(src_identity, endpoint.identity);
    if !policy::admit(endpoint, Direction::Ingress, src_identity, &ip, l4.as_ref()) {
        return Err(flow.drop(DropReason::PolicyDeniedIngress));
    }
    Ok(deliver(flow))
}
