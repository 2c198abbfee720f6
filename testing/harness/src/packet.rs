//! Building and checking packets byte by byte: Ethernet, IPv4 (with
//! options), TCP, UDP, ICMP and VXLAN, with real checksums, so tests can
//! feed the datapath exact frames and verify what it wrote back.

use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const VXLAN_HLEN: usize = 8;

/// Layer 4 content of a test packet.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    IcmpEcho { id: u16, seq: u16 },
    IcmpEchoReply { id: u16, seq: u16 },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An IPv4 packet in an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// IPv4 options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// TCP options (of a TCP segment), padded to a multiple of 4 bytes.
    pub tcp_options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            ttl: 64,
            options: Vec::new(),
            tcp_options: Vec::new(),
            l4,
            payload: b"fleetnet".to_vec(),
        }
    }

    /// A TCP segment with `flags` from `src`:`sport` to `dst`:`dport`.
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn build(&self) -> Vec<u8> {
        let (protocol, l4) = self.l4_bytes();
        let header_len = 20 + self.options.len();
        let total_len = header_len + l4.len();
        let mut frame = Vec::with_capacity(ETH_HLEN + total_len);
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        frame.push(0x40 | (header_len / 4) as u8);
        frame.push(0);
        frame.extend_from_slice(&(total_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0x12, 0x34, 0x40, 0x00]); // id, DF
        frame.push(self.ttl);
        frame.push(protocol);
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&self.src.octets());
        frame.extend_from_slice(&self.dst.octets());
        frame.extend_from_slice(&self.options);
        let checksum = internet_checksum(&frame[ETH_HLEN..ETH_HLEN + header_len]);
        frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(&l4);
        frame
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let mut bytes = Vec::new();
        let protocol = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                bytes.extend_from_slice(&sport.to_be_bytes());
                bytes.extend_from_slice(&dport.to_be_bytes());
                bytes.extend_from_slice(&1u32.to_be_bytes()); // seq
                bytes.extend_from_slice(&0u32.to_be_bytes()); // ack
                let data_offset = (20 + self.tcp_options.len()) / 4;
                bytes.extend_from_slice(&[(data_offset as u8) << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
                bytes.extend_from_slice(&self.tcp_options);
                IPPROTO_TCP
            }
            L4::Udp { sport, dport } => {
                bytes.extend_from_slice(&sport.to_be_bytes());
                bytes.extend_from_slice(&dport.to_be_bytes());
                bytes.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                bytes.extend_from_slice(&[0, 0]);
                IPPROTO_UDP
            }
            L4::IcmpEcho { id, seq } | L4::IcmpEchoReply { id, seq } => {
                let kind = if matches!(self.l4, L4::IcmpEcho { .. }) {
                    8
                } else {
                    0
                };
                bytes.extend_from_slice(&[kind, 0, 0, 0]);
                bytes.extend_from_slice(&id.to_be_bytes());
                bytes.extend_from_slice(&seq.to_be_bytes());
                IPPROTO_ICMP
            }
        };
        bytes.extend_from_slice(&self.payload);
        let checksum = match protocol {
            IPPROTO_ICMP => internet_checksum(&bytes),
            _ => l4_checksum(self.src, self.dst, protocol, &bytes),
        };
        let at = match protocol {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            _ => 2,
        };
        bytes[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
        (protocol, bytes)
    }
}

/// RFC 1071 checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum over the IPv4 pseudo-header and the segment.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.push(0);
    pseudo.push(protocol);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    let checksum = internet_checksum(&pseudo);
    if protocol == IPPROTO_UDP && checksum == 0 {
        0xffff
    } else {
        checksum
    }
}

/// The fields of an IPv4 frame a test asserts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIpv4 {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub protocol: u8,
    pub header_len: usize,
    pub total_len: usize,
}

pub fn parse_ipv4(frame: &[u8]) -> Option<ParsedIpv4> {
    if frame.len() < ETH_HLEN + 20 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    Some(ParsedIpv4 {
        dst_mac: frame[0..6].try_into().ok()?,
        src_mac: frame[6..12].try_into().ok()?,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ttl: ip[8],
        protocol: ip[9],
        header_len,
        total_len: usize::from(u16::from_be_bytes([ip[2], ip[3]])),
    })
}

/// Source and destination ports of a TCP or UDP frame.
pub fn ports(frame: &[u8]) -> Option<(u16, u16)> {
    let ip = parse_ipv4(frame)?;
    let l4 = frame.get(ETH_HLEN + ip.header_len..ETH_HLEN + ip.header_len + 4)?;
    Some((
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}

/// The UDP checksum field of a UDP frame.
pub fn udp_checksum(frame: &[u8]) -> Option<u16> {
    let ip = parse_ipv4(frame)?;
    let at = ETH_HLEN + ip.header_len + 6;
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// True when the IPv4 header checksum and the TCP/UDP/ICMP checksum of
/// `frame` are both right, recomputed from scratch.
pub fn checksums_valid(frame: &[u8]) -> bool {
    let Some(ip) = parse_ipv4(frame) else {
        return false;
    };
    let header = &frame[ETH_HLEN..ETH_HLEN + ip.header_len];
    if internet_checksum(header) != 0 {
        return false;
    }
    let segment = &frame[ETH_HLEN + ip.header_len..ETH_HLEN + ip.total_len];
    match ip.protocol {
        IPPROTO_ICMP => internet_checksum(segment) == 0,
        IPPROTO_TCP | IPPROTO_UDP => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&ip.src.octets());
            pseudo.extend_from_slice(&ip.dst.octets());
            pseudo.push(0);
            pseudo.push(ip.protocol);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(segment);
            internet_checksum(&pseudo) == 0
        }
        _ => true,
    }
}

/// A VXLAN header (RFC 7348) with the given VNI.
pub fn vxlan_header(vni: u32) -> [u8; VXLAN_HLEN] {
    let vni = vni.to_be_bytes();
    [0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]
}

/// A VXLAN packet seen on the underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanPacket {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub vni: u32,
    pub inner: ParsedIpv4,
}

/// Decodes an Ethernet frame carrying IPv4/UDP/VXLAN to `port`.
pub fn parse_vxlan(frame: &[u8], port: u16) -> Option<VxlanPacket> {
    let outer = parse_ipv4(frame)?;
    if outer.protocol != IPPROTO_UDP {
        return None;
    }
    let udp = frame.get(ETH_HLEN + outer.header_len..)?;
    if udp.len() < 8 + VXLAN_HLEN || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let vxlan = &udp[8..];
    if vxlan[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]);
    Some(VxlanPacket {
        outer_src: outer.src,
        outer_dst: outer.dst,
        vni,
        inner: parse_ipv4(&vxlan[VXLAN_HLEN..])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        let src = Ipv4Addr::new(10, 1, 1, 10);
        let dst = Ipv4Addr::new(10, 2, 1, 10);
        for l4 in [
            L4::Tcp {
                sport: 1000,
                dport: 80,
                flags: TCP_SYN,
            },
            L4::Udp {
                sport: 1000,
                dport: 53,
            },
            L4::IcmpEcho { id: 7, seq: 1 },
        ] {
            let mut frame = Frame::new(src, dst, l4.clone()).build();
            assert!(checksums_valid(&frame), "{l4:?}");
            frame[ETH_HLEN + 8] -= 1; // TTL changed without a checksum fix
            assert!(!checksums_valid(&frame), "{l4:?}");
        }
    }

    #[test]
    fn vxlan_round_trip() {
        let inner = Frame::new(
            Ipv4Addr::new(10, 2, 1, 10),
            Ipv4Addr::new(10, 1, 1, 10),
            L4::Udp { sport: 1, dport: 2 },
        )
        .build();
        let mut payload = vxlan_header(0x00ab_cdef).to_vec();
        payload.extend_from_slice(&inner);
        let mut outer = Frame::new(
            Ipv4Addr::new(198, 18, 2, 10),
            Ipv4Addr::new(198, 18, 1, 10),
            L4::Udp {
                sport: 40000,
                dport: 4789,
            },
        );
        outer.payload = payload;
        let parsed = parse_vxlan(&outer.build(), 4789).unwrap();
        assert_eq!(parsed.vni, 0x00ab_cdef);
        assert_eq!(parsed.outer_src, Ipv4Addr::new(198, 18, 2, 10));
        assert_eq!(parsed.inner.dst, Ipv4Addr::new(10, 1, 1, 10));
    }
}
