//! Types shared by fleetnet's eBPF programs and its agent.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, and its
//! size is asserted at compile time, so the kernel and userspace views of a
//! map can never drift apart silently. Enumerations are stored in maps as
//! plain integers; the typed enums here only convert to and from them.
#![no_std]

pub mod conntrack;
pub mod endpoint;
pub mod event;
pub mod identity;
pub mod ipcache;
pub mod maps;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod reason;
pub mod service;

pub use conntrack::{CtEntry, CtKey};
pub use endpoint::EndpointInfo;
pub use event::FlowEvent;
pub use ipcache::{IpKey, IpcacheEntry};
pub use metrics::{MetricsKey, MetricsValue, SelectionKey};
pub use node::NodeConfig;
pub use policy::PolicyKey;
pub use reason::{Direction, DropReason, Verdict};
pub use service::{Backend, ServiceInfo, ServiceKey};

/// `aya::Pod` lets the agent read and write these types in maps. Every type
/// listed has no implicit padding (checked by the size asserts next to it).
#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays,
    // and has explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for IpcacheEntry {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for MetricsKey {}
    unsafe impl aya::Pod for MetricsValue {}
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for SelectionKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn reason_codes_round_trip_and_never_overlap() {
        let mut codes = BTreeSet::new();
        let mut labels = BTreeSet::new();
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::from_code(*verdict as u8), Some(*verdict));
            assert!((*verdict as u8) < 128);
            assert!(codes.insert(*verdict as u8) && labels.insert(verdict.label()));
        }
        for reason in DropReason::ALL {
            assert_eq!(DropReason::from_code(*reason as u8), Some(*reason));
            assert!((*reason as u8) >= 128);
            assert!(codes.insert(*reason as u8) && labels.insert(reason.label()));
        }
        for label in labels {
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
        assert_eq!(Verdict::from_code(0), None);
        assert_eq!(DropReason::from_code(255), None);
    }

    #[test]
    fn ip_keys_lay_out_family_then_address_as_the_trie_expects() {
        let key = IpKey::v4([10, 1, 2, 3]);
        // SAFETY: IpKey is repr(C) plain data without padding bytes.
        let bytes: [u8; 20] = unsafe { core::mem::transmute(key) };
        assert_eq!(bytes[..8], [4, 0, 0, 0, 10, 1, 2, 3]);
        assert!(bytes[8..].iter().all(|b| *b == 0));
        assert_eq!(key.as_v4(), Some([10, 1, 2, 3]));
        let mut v6 = key;
        v6.family = IpKey::FAMILY_V6;
        assert_eq!(v6.as_v4(), None);
    }

    #[test]
    fn identities_carry_their_cluster() {
        let id = identity::make(4242, 7);
        assert_eq!(identity::cluster_of(id), 4242);
        assert_eq!(id & 0xffff, 7);
        assert_eq!(identity::cluster_of(identity::WORLD), 0);
    }

    #[test]
    fn local_entries_have_no_tunnel_endpoint() {
        let mut entry = IpcacheEntry::default();
        assert!(entry.is_local());
        entry.tunnel_endpoint = [198, 18, 0, 1];
        assert!(!entry.is_local());
    }
}
