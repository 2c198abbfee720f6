//! Load balancing: established flows keep their backend through conntrack;
//! new flows to a service frontend get a backend from the service's Maglev
//! slice, chosen by a hash of the 5-tuple, and are recorded in conntrack.
//! [`balance`] translates a packet to its backend, [`translate_reply`] a
//! backend's reply back to the service address.

use aya_ebpf::programs::TcContext;
use dataplane_common::{CtEntry, CtKey, DropReason, NodeConfig, ServiceKey};

use crate::{
    conntrack, maps, metrics,
    nat::{self, End},
    parse::{Ipv4, L4},
    verdict::Drop,
};

/// If the packet goes to a service frontend (or belongs to a balanced
/// flow), rewrites its destination to the backend; returns the backend.
#[inline(always)]
pub fn balance(
    ctx: &TcContext,
    node: &NodeConfig,
    ip: &Ipv4,
    l4: &L4,
) -> Result<Option<Target>, Drop> {
    let Some(backend) = select(node, ip, l4)? else {
        return Ok(None);
    };
    nat::rewrite(
        ctx,
        ip,
        End::Destination,
        l4.dst_port,
        backend.addr,
        backend.port,
    )?;
    Ok(Some(backend))
}

/// If the packet is a reply in a connection tracked on this node, returns
/// its source address: for a load-balanced connection rewritten back to
/// the service address, otherwise unchanged.
#[inline(always)]
pub fn translate_reply(ctx: &TcContext, ip: &Ipv4, l4: &L4) -> Result<Option<[u8; 4]>, Drop> {
    if !conntrack::may_answer(ip.protocol, l4) {
        return Ok(None);
    }
    let reply = conntrack::key(ip, l4, CtKey::REPLY);
    let Some((entry, refreshed)) = conntrack::lookup_refreshed(&reply, l4) else {
        return Ok(None);
    };
    if entry.flags & CtEntry::NAT == 0 {
        return Ok(Some(ip.src));
    }
    // The original direction: client -> service address.
    let original = CtKey {
        src: ip.dst,
        dst: entry.addr,
        src_port: l4.dst_port,
        dst_port: entry.port,
        protocol: ip.protocol,
        direction: CtKey::ORIGINAL,
        icmp_echo: CtKey::answering(l4.icmp_echo),
        _pad: 0,
    };
    let to_backend = nat_entry(ip.src, l4.src_port, entry.cluster_id);
    conntrack::follow_other_direction(&original, to_backend, &entry, refreshed, l4);
    nat::rewrite(ctx, ip, End::Source, l4.src_port, entry.addr, entry.port)?;
    Ok(Some(entry.addr))
}

/// Where a packet to a service goes.
#[derive(Clone, Copy)]
pub struct Target {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: u16,
}

/// For a packet leaving a pod: the backend to send it to, if its
/// destination is a service frontend (or a flow already balanced).
#[inline(always)]
fn select(node: &NodeConfig, ip: &Ipv4, l4: &L4) -> Result<Option<Target>, Drop> {
    // Only flows to a frontend are tracked, so other traffic needs no
    // conntrack lookup (a deleted frontend's flows stop being translated,
    // as with kube-proxy).
    let frontend = ServiceKey {
        vip: ip.dst,
        port: l4.dst_port,
        protocol: ip.protocol,
        _pad: 0,
    };
    let Some(service) = maps::service(&frontend) else {
        conntrack::forget_translation(ip, l4);
        return Ok(None);
    };
    // A connection reopened on the tuple of an earlier one (a SYN after
    // its handshake) is balanced afresh, which also renews its reply entry.
    let original = conntrack::key(ip, l4, CtKey::ORIGINAL);
    if let Some((entry, refreshed)) = conntrack::lookup_refreshed(&original, l4)
        && !conntrack::reopens(&entry, ip.protocol, l4)
    {
        let reply = reply_key(ip, l4, entry.addr, entry.port);
        let to_vip = nat_entry(ip.dst, l4.dst_port, entry.cluster_id);
        conntrack::follow_other_direction(&reply, to_vip, &entry, refreshed, l4);
        return Ok(Some(Target {
            addr: entry.addr,
            port: entry.port,
        }));
    }
    let no_backend = Drop::new(DropReason::NoBackend);
    let table_size = node.maglev_table_size;
    if service.backend_count == 0 || table_size == 0 {
        return Err(no_backend);
    }
    let slot = flow_hash(ip, l4) % table_size;
    let id = maps::maglev_slot(table_size, service.service_id, slot).ok_or(no_backend)?;
    let backend = maps::backend(id).ok_or(no_backend)?;
    let addr = backend.addr.as_v4().ok_or(no_backend)?;
    let target = Target {
        addr,
        port: backend.port,
    };
    let reply = reply_key(ip, l4, addr, backend.port);
    conntrack::create(
        &original,
        nat_entry(addr, backend.port, backend.cluster_id),
        &reply,
        nat_entry(ip.dst, l4.dst_port, backend.cluster_id),
        l4,
    );
    metrics::count_selection(service.service_id, backend.cluster_id);
    Ok(Some(target))
}

/// A conntrack entry translating to `addr`:`port` (network byte order),
/// its state and lifetime still to be set.
#[inline(always)]
fn nat_entry(addr: [u8; 4], port: u16, cluster_id: u16) -> CtEntry {
    CtEntry {
        addr,
        port,
        cluster_id,
        flags: CtEntry::NAT,
        ..CtEntry::default()
    }
}

/// The reply direction of a packet from a client balanced to `backend`
/// (`port` in network byte order).
#[inline(always)]
fn reply_key(ip: &Ipv4, l4: &L4, backend: [u8; 4], port: u16) -> CtKey {
    CtKey {
        src: backend,
        dst: ip.src,
        src_port: port,
        dst_port: l4.src_port,
        protocol: ip.protocol,
        direction: CtKey::REPLY,
        icmp_echo: CtKey::answering(l4.icmp_echo),
        _pad: 0,
    }
}

/// A 32-bit hash of the 5-tuple (murmur3's finalizer over each word).
#[inline(always)]
fn flow_hash(ip: &Ipv4, l4: &L4) -> u32 {
    let ports = ((l4.src_port as u32) << 16) | l4.dst_port as u32;
    let mut hash = 0x9e37_79b9u32;
    for word in [
        u32::from_ne_bytes(ip.src),
        u32::from_ne_bytes(ip.dst),
        ports,
        ip.protocol as u32,
    ] {
        hash = mix(hash ^ word);
    }
    hash
}

#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}
