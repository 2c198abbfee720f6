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
    verdict::{self, Drop, PASS},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<i32, Drop> {
    let node = maps::node_config().ok_or(Drop::new(DropReason::NotConfigured))?;
    let local = node.cluster_id;
    let forward = |src_cluster| {
        verdict::forward(
            ctx,
            Verdict::FromStack,
            Direction::Ingress,
            src_cluster,
            local,
            PASS,
        )
    };
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(forward(0));
    };
    let Some(endpoint) = maps::endpoint_v4(ip.dst) else {
        return Ok(forward(0));
    };
    let enforced = EndpointInfo::INGRESS_ENFORCED | EndpointInfo::EGRESS_ENFORCED;
    if endpoint.flags & enforced == 0 {
        return Ok(forward(0));
    }

    let l4 = parse::l4(ctx, &ip)?;
    if let Some(l4) = &l4
        && lb::translate_reply(ctx, &ip, l4)?.is_some()
    {
        return Ok(forward(0));
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
    if !policy::admit(endpoint, Direction::Ingress, src_identity, &ip, l4.as_ref()) {
        return Err(Drop::new(DropReason::PolicyDeniedIngress)
            .clusters(src_cluster, local)
            .identities(src_identity, endpoint.identity)
            .flow(&ip, l4.as_ref()));
    }
    Ok(forward(src_cluster))
}
