//! Header parsing with direct packet access. Every read is bounds-checked
//! against `data_end`; a packet shorter than what it announces is a
//! `Truncated` drop, an impossible IPv4 header a `BadIpHeader` drop.

use aya_ebpf::programs::TcContext;
use dataplane_common::DropReason;

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

/// The IPv4 fields routing needs.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
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
    Ok(Some(Ipv4 {
        src: ip.saddr,
        dst: ip.daddr,
        ttl: ip.ttl,
    }))
}
