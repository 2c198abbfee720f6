//! Connection tracking for load-balanced flows: lookups that ignore expired
//! entries, creation of both directions at once, and a lifetime that
//! follows TCP's state (refreshed at most once a second).

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use dataplane_common::{
    CtEntry, CtKey,
    conntrack::{
        CT_LIFETIME_CLOSING_NS, CT_LIFETIME_NON_TCP_NS, CT_LIFETIME_SYN_NS, CT_LIFETIME_TCP_NS,
        CT_REFRESH_NS,
    },
};

use crate::{
    maps::CONNTRACK,
    parse::{IPPROTO_TCP, IPPROTO_UDP, Ipv4, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn key(ip: &Ipv4, l4: &L4, direction: u8) -> CtKey {
    CtKey {
        src: ip.src,
        dst: ip.dst,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        protocol: ip.protocol,
        direction,
        icmp_echo: l4.icmp_echo,
        _pad: 0,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// The live entry for `key`, refreshed for this packet.
#[inline(always)]
pub fn lookup(key: &CtKey, l4: &L4) -> Option<CtEntry> {
    lookup_refreshed(key, l4).map(|(entry, _)| entry)
}

/// The live entry for `key`, refreshed for this packet, and whether this
/// packet renewed its lifetime (a new state, or a second since the last).
#[inline(always)]
pub fn lookup_refreshed(key: &CtKey, l4: &L4) -> Option<(CtEntry, bool)> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    let now = now();
    // SAFETY: the pointer is to this map's value; the program runs to
    // completion on one CPU, and a concurrent update only races a refresh.
    let entry = unsafe { &mut *entry };
    if entry.expires < now {
        return None;
    }
    let state = next_state(entry.state, key.protocol, l4.tcp_flags);
    let refreshed = state != entry.state || now - entry.refreshed > CT_REFRESH_NS;
    if refreshed {
        entry.state = state;
        entry.expires = now + lifetime(key.protocol, state);
        entry.refreshed = now;
    }
    Some((*entry, refreshed))
}

/// The reply entry for a packet going the other way: its replies will
/// match it (addresses and ports swapped).
#[inline(always)]
pub fn reply_key_for(ip: &Ipv4, l4: &L4) -> CtKey {
    CtKey {
        src: ip.dst,
        dst: ip.src,
        src_port: l4.dst_port,
        dst_port: l4.src_port,
        protocol: ip.protocol,
        direction: CtKey::REPLY,
        icmp_echo: CtKey::answering(l4.icmp_echo),
        _pad: 0,
    }
}

/// Makes sure replies to this packet will be recognised (and pass the
/// policy of the endpoint they return to): refreshes or creates the reply
/// entry, without NAT.
#[inline(always)]
pub fn expect_reply(ip: &Ipv4, l4: &L4) {
    let key = reply_key_for(ip, l4);
    if let Some(entry) = lookup(&key, l4)
        && !reopens(&entry, ip.protocol, l4)
    {
        return;
    }
    let now = now();
    let state = next_state(CtEntry::TCP_OPENING, ip.protocol, l4.tcp_flags);
    let entry = CtEntry {
        state,
        expires: now + lifetime(ip.protocol, state),
        refreshed: now,
        ..CtEntry::default()
    };
    let _ = CONNTRACK.insert(key, entry, BPF_ANY as u64);
}

/// True when this packet starts a new connection on the tuple of an
/// earlier one: a SYN once that one's handshake is over (a SYN during the
/// handshake is a retransmission). A client opens a tuple again only when
/// its old connection is gone, usually a port reused within the closing
/// lifetime; but also when the old one's end went unseen (its backend
/// vanished), and then the new one must not follow it there.
#[inline(always)]
pub fn reopens(entry: &CtEntry, protocol: u8, l4: &L4) -> bool {
    protocol == IPPROTO_TCP && entry.state != CtEntry::TCP_OPENING && is_syn(l4.tcp_flags)
}

/// A packet sent straight to an address that is not a service frontend
/// cannot belong to a load-balanced flow. If the reply entry of such a
/// flow (same ports, backend answering) is still alive, it would rewrite
/// this flow's replies to come from the service address: a new TCP
/// connection or a UDP datagram removes it.
#[inline(always)]
pub fn forget_translation(ip: &Ipv4, l4: &L4) {
    let opens = match ip.protocol {
        IPPROTO_TCP => is_syn(l4.tcp_flags),
        IPPROTO_UDP => true,
        _ => false,
    };
    if !opens {
        return;
    }
    let key = reply_key_for(ip, l4);
    // SAFETY: the value is copied out at once.
    let translated =
        unsafe { CONNTRACK.get(key) }.is_some_and(|entry| entry.flags & CtEntry::NAT != 0);
    if translated {
        let _ = CONNTRACK.remove(key);
    }
}

/// Keeps the other direction of a load-balanced connection in step with
/// `this` entry, just looked up for a packet. Only when that renewed
/// `this` (a new state, or a second since the last) or the packet is a
/// SYN, so an established flow pays the extra lookup once a second:
/// - the other entry gone or dead (evicted from a full LRU table, or
///   swept in a race with a reused port): it is made again from `other`
///   with this entry's state, so replies are translated again; without
///   it a retransmitted SYN would meet a live entry here and never get
///   its SYN-ACK put back to the VIP;
/// - this packet ends the connection (FIN or RST): the other entry closes
///   too, since it sees only the other end's packets and would otherwise
///   outlive the connection by hours.
#[inline(always)]
pub fn follow_other_direction(
    key: &CtKey,
    other: CtEntry,
    this: &CtEntry,
    refreshed: bool,
    l4: &L4,
) {
    if !refreshed && !is_syn(l4.tcp_flags) {
        return;
    }
    let now = now();
    match CONNTRACK.get_ptr_mut(key) {
        // SAFETY: the pointer is to this map's value (see `lookup`).
        Some(entry) if unsafe { (*entry).expires } >= now => {
            let entry = unsafe { &mut *entry };
            if this.state == CtEntry::CLOSING && entry.state != CtEntry::CLOSING {
                entry.state = CtEntry::CLOSING;
                entry.expires = now + CT_LIFETIME_CLOSING_NS;
                entry.refreshed = now;
            }
        }
        _ => {
            let entry = CtEntry {
                state: this.state,
                expires: this.expires,
                refreshed: now,
                ..other
            };
            let _ = CONNTRACK.insert(key, entry, BPF_ANY as u64);
        }
    }
}

/// False for packets that never answer a tracked connection, so need no
/// reply lookup: a TCP SYN opens a connection, and an ICMP echo request
/// asks (the reply entry of an echo request expects echo replies).
#[inline(always)]
pub fn may_answer(protocol: u8, l4: &L4) -> bool {
    !(protocol == IPPROTO_TCP && is_syn(l4.tcp_flags)) && l4.icmp_echo != CtKey::ECHO_REQUEST
}

/// The first packet of a TCP connection (not the SYN-ACK).
#[inline(always)]
fn is_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Records a new load-balanced connection: `original` -> backend,
/// `reply` -> VIP.
#[inline(always)]
pub fn create(original: &CtKey, to_backend: CtEntry, reply: &CtKey, to_vip: CtEntry, l4: &L4) {
    let now = now();
    let state = next_state(CtEntry::TCP_OPENING, original.protocol, l4.tcp_flags);
    let stamp = |mut entry: CtEntry| {
        entry.state = state;
        entry.expires = now + lifetime(original.protocol, state);
        entry.refreshed = now;
        entry
    };
    // A full table evicts its least recently used entries (LRU map).
    let _ = CONNTRACK.insert(original, stamp(to_backend), BPF_ANY as u64);
    let _ = CONNTRACK.insert(reply, stamp(to_vip), BPF_ANY as u64);
}

#[inline(always)]
fn next_state(state: u8, protocol: u8, flags: u8) -> u8 {
    if protocol != IPPROTO_TCP {
        return CtEntry::ESTABLISHED;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        CtEntry::CLOSING
    } else if state == CtEntry::CLOSING {
        state
    } else if flags & TCP_ACK != 0 || flags & TCP_SYN == 0 {
        CtEntry::ESTABLISHED
    } else {
        state
    }
}

#[inline(always)]
fn lifetime(protocol: u8, state: u8) -> u64 {
    if protocol != IPPROTO_TCP {
        return CT_LIFETIME_NON_TCP_NS;
    }
    match state {
        CtEntry::TCP_OPENING => CT_LIFETIME_SYN_NS,
        CtEntry::CLOSING => CT_LIFETIME_CLOSING_NS,
        _ => CT_LIFETIME_TCP_NS,
    }
}
