//! Address and port rewriting for load balancing. The L4 checksum goes
//! through the kernel's helper: it keeps it right for every skb checksum
//! state, including CHECKSUM_PARTIAL packets from veths, where only
//! pseudo-header changes may touch the L4 checksum field. The rest (the
//! IPv4 header's checksum, the address, the port) is written in place:
//! two helper calls per rewrite instead of five.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use dataplane_common::DropReason;

use crate::{
    checksum,
    parse::{self, ETH_HLEN, IPPROTO_UDP, Ipv4, Ipv4Hdr, l4_checksum_offset},
    verdict::Drop,
};

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
    let (old_addr, port_off) = match end {
        End::Source => (ip.src, ip.l4_offset),
        End::Destination => (ip.dst, ip.l4_offset + 2),
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
    if old_port != new_port {
        ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, mangled | 2)
            .map_err(failed)?;
        // Helper calls invalidate packet pointers: bounds checked anew.
        let port = parse::ptr_at::<u16>(ctx, port_off)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { port.write_unaligned(new_port) };
    }
    let header = parse::ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: ptr_at checked the bounds; the checksum is read and written
    // unaligned, as a packet's bytes may sit at any alignment.
    unsafe {
        let check = u16::from_be((&raw const (*header).check).read_unaligned());
        let check = checksum::after_replace(check, old_addr, new_addr).to_be();
        (&raw mut (*header).check).write_unaligned(check);
        match end {
            End::Source => (*header).saddr = new_addr,
            End::Destination => (*header).daddr = new_addr,
        }
    }
    Ok(())
}
