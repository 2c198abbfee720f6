//! Ports as the policy map sees them: a range becomes the few prefixes of
//! the 16-bit port that cover it exactly, as in Cilium's port-range LPM.

use std::collections::{BTreeMap, BTreeSet};

/// A pod's named container ports: name to (IP protocol, port).
pub type NamedPorts = BTreeMap<String, (u8, u16)>;

/// Every (protocol, port) a name stands for among the pods of one identity.
pub type IdentityPorts = BTreeMap<String, BTreeSet<(u8, u16)>>;

/// The smallest set of (value, prefix length in bits) whose prefixes cover
/// exactly `first..=last`.
pub fn prefixes(first: u16, last: u16) -> Vec<(u16, u32)> {
    let (mut start, end) = (u32::from(first), u32::from(last));
    let mut out = Vec::new();
    while start <= end {
        // The largest aligned block starting at `start` that fits.
        let mut size = if start == 0 {
            1 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        out.push((start as u16, 16 - size.trailing_zeros()));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every port the prefixes cover, in order.
    fn covered(prefixes: &[(u16, u32)]) -> Vec<u16> {
        let mut ports: Vec<u16> = prefixes
            .iter()
            .flat_map(|(value, len)| {
                let size = 1u32 << (16 - len);
                (u32::from(*value)..u32::from(*value) + size).map(|p| p as u16)
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn ranges_become_exact_minimal_prefixes() {
        assert_eq!(prefixes(80, 80), [(80, 16)]);
        assert_eq!(prefixes(8080, 8083), [(8080, 14)]);
        assert_eq!(prefixes(0, 65535), [(0, 0)]);
        assert_eq!(prefixes(32768, 65535), [(32768, 1)]);
        // 1000..=2000: Cilium's example needs 8 prefixes.
        let p = prefixes(1000, 2000);
        assert_eq!(p.len(), 8, "{p:?}");
        for (first, last) in [
            (1000, 2000),
            (1, 65535),
            (5, 6),
            (65535, 65535),
            (30000, 32767),
        ] {
            assert_eq!(
                covered(&prefixes(first, last)),
                (first..=last).collect::<Vec<_>>(),
                "{first}..={last}"
            );
        }
    }
}
