//! The path to another node carries IPv4 packets up to the node's path MTU
//! (the underlay's MTU less the tunnel's overhead). A larger packet is never
//! fragmented on the underlay: it is answered with ICMP "fragmentation
//! needed" (RFC 1191) carrying that MTU, which the sender's path MTU
//! discovery acts on, and TCP SYNs crossing the path have their MSS option
//! clamped to fit, so their segments never need the answer.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_redirect_peer, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use dataplane_common::{Direction, DropReason, EndpointInfo, NodeConfig};

use crate::{
    parse::{
        ETH_HLEN, EthHdr, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4, Ipv4Hdr, L4, TCP_SYN,
        ptr_at,
    },
    verdict::{self, Drop, Flow},
};

/// IPv4 and TCP headers without options: what the MSS leaves out.
const TCP_IP_HEADERS: u16 = 40;
/// TCP options are at most 40 bytes: at most 40 of them.
const MAX_TCP_OPTIONS: usize = 40;
const TCP_OPTION_END: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;
const TCP_OPTION_MSS: u8 = 2;

/// Whether `ip` fits a path of `mtu` bytes (0: not known, anything fits).
/// A GSO packet is judged by the segments it will become.
#[inline(always)]
pub fn fits(ctx: &TcContext, ip: &Ipv4, mtu: u16) -> Result<bool, Drop> {
    if mtu == 0 {
        return Ok(true);
    }
    // SAFETY: reading a field of the program's own context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return Ok(ip.total_len <= mtu);
    }
    let l4_header = match ip.protocol {
        IPPROTO_TCP => {
            // SAFETY: ptr_at checked the bounds.
            let data_offset = unsafe { *ptr_at::<u8>(ctx, ip.l4_offset + 12)? } >> 4;
            u32::from(data_offset) * 4
        }
        IPPROTO_UDP => 8,
        _ => 0,
    };
    let segment = gso_size + (ip.l4_offset - ETH_HLEN) as u32 + l4_header;
    Ok(segment <= u32::from(mtu))
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) to what fits a path of
/// `mtu` bytes. Options are read a byte at a time with the load helper:
/// SYNs are few, and their options lie at offsets the verifier cannot
/// bound for direct access. The checksum helper leaves a CHECKSUM_PARTIAL
/// packet's checksum field alone, as it must: the payload's sum is added
/// later.
#[inline(always)]
pub fn clamp_mss(ctx: &TcContext, ip: &Ipv4, l4: &L4, mtu: u16) -> Result<(), Drop> {
    if mtu <= TCP_IP_HEADERS || ip.protocol != IPPROTO_TCP || l4.tcp_flags & TCP_SYN == 0 {
        return Ok(());
    }
    let failed = |_| Drop::new(DropReason::HelperFailed);
    let max_mss = mtu - TCP_IP_HEADERS;
    let tcp = ip.l4_offset;
    let data_offset: u8 = load(ctx, tcp + 12).map_err(failed)?;
    let options_end = tcp + usize::from(data_offset >> 4) * 4;
    let mut at = tcp + 20;
    for _ in 0..MAX_TCP_OPTIONS {
        if at >= options_end {
            break;
        }
        let kind: u8 = load(ctx, at).map_err(failed)?;
        if kind == TCP_OPTION_END {
            break;
        }
        if kind == TCP_OPTION_NOP {
            at += 1;
            continue;
        }
        let len: u8 = load(ctx, at + 1).map_err(failed)?;
        if kind == TCP_OPTION_MSS && len == 4 {
            let old: u16 = load(ctx, at + 2).map_err(failed)?;
            if u16::from_be(old) > max_mss {
                let new = max_mss.to_be();
                ctx.l4_csum_replace(tcp + 16, u64::from(old), u64::from(new), 2)
                    .map_err(failed)?;
                ctx.store(at + 2, &new, 0).map_err(failed)?;
            }
            return Ok(());
        }
        if len < 2 {
            // Malformed options: leave them to the receiver.
            break;
        }
        at += usize::from(len);
    }
    Ok(())
}

/// `T` read from the packet at `offset` with the load helper.
#[inline(always)]
fn load<T: Copy + Default>(ctx: &TcContext, offset: usize) -> Result<T, i64> {
    let mut value = T::default();
    // SAFETY: `value` is size_of::<T>() bytes of this stack frame.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            (&mut value as *mut T).cast(),
            size_of::<T>() as u32,
        )
    };
    if ret == 0 { Ok(value) } else { Err(ret) }
}

/// What an ICMP error quotes of the packet it answers: its IPv4 header
/// (options included) and the start of its payload, where the sender finds
/// the socket.
const QUOTE: usize = 68;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const REPLY_TTL: u8 = 64;

/// The answer, as it goes back into the pod.
#[repr(C)]
struct FragNeededReply {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp: [u8; 8],
    quote: [u8; QUOTE],
}

const REPLY_LEN: usize = size_of::<FragNeededReply>();
const _: () = assert!(REPLY_LEN == ETH_HLEN + 20 + 8 + QUOTE);

/// Answers a packet too big for the path with ICMP "fragmentation needed"
/// (type 3, code 4) carrying `mtu`, from this node's address,
/// straight back into `pod`, the sender. The packet itself is counted as
/// dropped (`frag_needed`) first: the answer replaces it, when it can be
/// written; otherwise the packet is just dropped.
#[inline(always)]
pub fn answer_too_big(
    ctx: &TcContext,
    node: &NodeConfig,
    mtu: u16,
    pod: &EndpointInfo,
    ip: &Ipv4,
    flow: &Flow,
) -> i32 {
    let shot = verdict::drop(ctx, flow.drop(DropReason::FragNeeded), Direction::Egress);
    if write_answer(ctx, node, mtu, pod, ip).is_err() {
        return shot;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(pod.ifindex, 0) as i32 }
}

#[inline(always)]
fn write_answer(
    ctx: &TcContext,
    node: &NodeConfig,
    mtu: u16,
    pod: &EndpointInfo,
    ip: &Ipv4,
) -> Result<(), i64> {
    // SAFETY: FragNeededReply is plain data; all-zero is a valid value.
    let mut reply: FragNeededReply = unsafe { core::mem::zeroed() };
    // A constant length, as the verifier wants it; the packet is longer.
    // SAFETY: the quote buffer is QUOTE bytes of this stack frame.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            ETH_HLEN as u32,
            reply.quote.as_mut_ptr().cast(),
            QUOTE as u32,
        )
    };
    if loaded != 0 {
        return Err(loaded);
    }
    // SAFETY: plain helper call on the program's own packet.
    let resized = unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) };
    if resized != 0 {
        return Err(resized);
    }
    reply.eth = EthHdr {
        dst: pod.mac,
        src: pod.node_mac,
        proto: 0x0800u16.to_be(),
    };
    reply.ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((REPLY_LEN - ETH_HLEN) as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: REPLY_TTL,
        protocol: IPPROTO_ICMP,
        check: 0,
        saddr: node.node_ip,
        daddr: ip.src,
    };
    reply.ip.check = checksum(&mut reply.ip as *mut Ipv4Hdr as *mut u32, 20);
    let [mtu_hi, mtu_lo] = mtu.to_be_bytes();
    reply.icmp = [
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        0,
        0,
        0,
        0,
        mtu_hi,
        mtu_lo,
    ];
    let [check_0, check_1] =
        checksum(&mut reply.icmp as *mut [u8; 8] as *mut u32, 8 + QUOTE).to_ne_bytes();
    reply.icmp[2] = check_0;
    reply.icmp[3] = check_1;
    ctx.store(0, &reply, 0)
}

/// The Internet checksum of `len` bytes at `data` (a multiple of 4), as it
/// is stored: the folded one's complement of their sum.
#[inline(always)]
fn checksum(data: *mut u32, len: usize) -> u16 {
    // SAFETY: `data` points to `len` bytes of the caller's stack.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, data, len as u32, 0) } as u64;
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
