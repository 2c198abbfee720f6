//! Header parsing with direct packet access. Every read is bounds-checked
//! against `data_end`; a packet shorter than what it announces is a
//! `Truncated` drop, an impossible IPv4 header a `BadIpHeader` drop.

use aya_ebpf::programs::TcContext;
use dataplane_common::{CtKey, DropReason};

use crate::verdict::Drop;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HLEN: usize = 20;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// The IPv4 fields routing and load balancing need.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub protocol: u8,
    /// Offset of the L4 header from the start of the frame.
    pub l4_offset: usize,
    /// More fragments follow, or this is not the first one.
    pub fragment: bool,
    /// The IPv4 total length (of the whole packet, for a GSO one).
    pub total_len: u16,
}

/// TCP or UDP ports (network byte order, as in the packet) and TCP flags.
/// For ICMP echo, the echo id in both ports and whether it is a request
/// or a reply (`CtKey::ECHO_REQUEST`/`ECHO_REPLY`, else 0).
#[derive(Clone, Copy)]
pub struct L4 {
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub icmp_echo: u8,
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offset of the L4 checksum from the L4 header, for TCP and UDP.
pub const fn l4_checksum_offset(protocol: u8) -> usize {
    if protocol == IPPROTO_TCP { 16 } else { 6 }
}

/// Ports of an unfragmented TCP or UDP packet; for an ICMP echo request
/// or reply, its id as both ports (so the reply of a request has the
/// request's ports reversed, as with TCP and UDP); `None` for anything else.
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4) -> Result<Option<L4>, Drop> {
    if ip.fragment {
        return Ok(None);
    }
    if ip.protocol == IPPROTO_ICMP {
        let header = ptr_at::<[u8; 6]>(ctx, ip.l4_offset)?;
        // SAFETY: ptr_at checked the bounds.
        let [kind, _, _, _, id_hi, id_lo] = unsafe { *header };
        if kind != ICMP_ECHO_REQUEST && kind != ICMP_ECHO_REPLY {
            return Ok(None);
        }
        let id = u16::from_ne_bytes([id_hi, id_lo]);
        let icmp_echo = if kind == ICMP_ECHO_REQUEST {
            CtKey::ECHO_REQUEST
        } else {
            CtKey::ECHO_REPLY
        };
        return Ok(Some(L4 {
            src_port: id,
            dst_port: id,
            tcp_flags: 0,
            icmp_echo,
        }));
    }
    if ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP {
        return Ok(None);
    }
    // TCP needs its flags byte (offset 13); UDP its 8-byte header.
    let wanted = ip.l4_offset + if ip.protocol == IPPROTO_TCP { 20 } else { 8 };
    if ctx.data_end() - ctx.data() < wanted && ctx.len() as usize >= wanted {
        ctx.pull_data(wanted as u32)
            .map_err(|_| Drop::new(DropReason::HelperFailed))?;
    }
    let ports = ptr_at::<[u16; 2]>(ctx, ip.l4_offset)?;
    // SAFETY: ptr_at checked the bounds.
    let [src_port, dst_port] = unsafe { *ports };
    let tcp_flags = if ip.protocol == IPPROTO_TCP {
        // SAFETY: ptr_at checks the bounds.
        unsafe { *ptr_at::<u8>(ctx, ip.l4_offset + 13)? }
    } else {
        0
    };
    Ok(Some(L4 {
        src_port,
        dst_port,
        tcp_flags,
        icmp_echo: 0,
    }))
}

/// A bounds-checked pointer into the packet. Writing through it is a
/// direct packet write: valid until a helper changes the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*mut T, Drop> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Drop::new(DropReason::Truncated));
    }
    Ok((start + offset) as *mut T)
}

/// The port policy matches: the destination port of TCP and UDP, 0 for
/// everything else (an ICMP echo id is not a port).
#[inline(always)]
pub fn policy_port(ip: &Ipv4, l4: Option<&L4>) -> u16 {
    match l4 {
        Some(l4) if ip.protocol != IPPROTO_ICMP => l4.dst_port,
        _ => 0,
    }
}

/// Parses Ethernet and IPv4. `Ok(None)` for frames that are not IPv4.
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Result<Option<Ipv4>, Drop> {
    // Headers normally sit in the linear part; pull them there if not.
    let wanted = ETH_HLEN + IPV4_MIN_HLEN;
    if ctx.data_end() - ctx.data() < wanted && ctx.len() as usize >= wanted {
        ctx.pull_data(wanted as u32)
            .map_err(|_| Drop::new(DropReason::HelperFailed))?;
    }

    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    if u16::from_be(unsafe { (*eth).proto }) != ETH_P_IP {
        return Ok(None);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: ptr_at checked the bounds.
    let ip = unsafe { &*ip };
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return Err(Drop::new(DropReason::BadIpHeader));
    }
    let total_len = u16::from_be(ip.tot_len) as usize;
    let frame_len = ctx.len() as usize;
    if frame_len < ETH_HLEN + header_len {
        return Err(Drop::new(DropReason::Truncated));
    }
    if total_len < header_len || ETH_HLEN + total_len > frame_len {
        return Err(Drop::new(DropReason::BadIpHeader));
    }
    let frag = u16::from_be(ip.frag_off);
    Ok(Some(Ipv4 {
        src: ip.saddr,
        dst: ip.daddr,
        ttl: ip.ttl,
        protocol: ip.protocol,
        l4_offset: ETH_HLEN + header_len,
        // MF set or a non-zero offset (DF, 0x4000, is fine).
        fragment: frag & 0x3fff != 0,
        total_len: total_len as u16,
    }))
}
