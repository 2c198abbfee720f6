//! Address and port rewriting for load balancing. The checksum helpers are
//! used rather than direct writes: they keep checksums right for every skb
//! checksum state, including CHECKSUM_PARTIAL packets from veths, where
//! only pseudo-header changes may touch the L4 checksum field.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use dataplane_common::DropReason;

use crate::{
    parse::{ETH_HLEN, IPPROTO_UDP, Ipv4, l4_checksum_offset},
    verdict::Drop,
};

const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;
const IPV4_SRC_OFF: usize = ETH_HLEN + 12;
const IPV4_DST_OFF: usize = ETH_HLEN + 16;

/// Which end of the flow to rewrite.
#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites the source or destination address and port of a TCP or UDP
/// packet, with its IPv4 and L4 checksums. `old_port`/`new_port` are in
/// network byte order, as in the packet.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4,
    end: End,
    old_port: u16,
    new_addr: [u8; 4],
    new_port: u16,
) -> Result<(), Drop> {
    let failed = |_| Drop::new(DropReason::HelperFailed);
    let (old_addr, addr_off, port_off) = match end {
        End::Source => (ip.src, IPV4_SRC_OFF, ip.l4_offset),
        End::Destination => (ip.dst, IPV4_DST_OFF, ip.l4_offset + 2),
    };
    let csum_off = ip.l4_offset + l4_checksum_offset(ip.protocol);
    // A UDP checksum of 0 means "none" and must stay so.
    let mangled = if ip.protocol == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let (old, new) = (
        u32::from_ne_bytes(old_addr) as u64,
        u32::from_ne_bytes(new_addr) as u64,
    );
    ctx.l4_csum_replace(csum_off, old, new, BPF_F_PSEUDO_HDR as u64 | mangled | 4)
        .map_err(failed)?;
    ctx.l3_csum_replace(IPV4_CSUM_OFF, old, new, 4)
        .map_err(failed)?;
    ctx.store(addr_off, &new_addr, 0).map_err(failed)?;
    if old_port != new_port {
        ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, mangled | 2)
            .map_err(failed)?;
        ctx.store(port_off, &new_port, 0).map_err(failed)?;
    }
    Ok(())
}
