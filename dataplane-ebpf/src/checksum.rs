//! Incremental updates of the IPv4 header checksum (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')), for the two changes the datapath makes in
//! place: a TTL decrement (routing) and a rewritten address (NAT).

/// After a header word m decreases by `delta` to m': ~m + m' is ~delta
/// in one's complement.
#[inline(always)]
pub fn after_decrease(check: u16, delta: u16) -> u16 {
    fold(u32::from(!check) + u32::from(!delta))
}

/// After a 32-bit field (two 16-bit words) changes from `old` to `new`,
/// summed word by word.
#[inline(always)]
pub fn after_replace(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let word = |bytes: [u8; 4], i: usize| u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
    fold(
        u32::from(!check)
            + (0xffff - word(old, 0))
            + (0xffff - word(old, 2))
            + word(new, 0)
            + word(new, 2),
    )
}

/// The one's complement of a 32-bit sum folded to 16 bits. Two folds
/// suffice: the first leaves at most 0x1fffe.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
