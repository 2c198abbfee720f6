//! The fleetnet agent: loads the eBPF datapath, attaches it to the node's
//! pods and tunnel device, and programs its maps.

pub mod agent;
pub mod bpffs;
pub mod client;
pub mod clock;
pub mod config;
pub mod datapath;
pub mod fleet;
pub mod local;
pub mod mesh;
pub mod metrics;
pub mod netlink;
pub mod observe;
pub mod policy;
pub mod privileges;
pub mod services;
pub mod source;
pub mod status;

/// The eBPF object built by build.rs from the `dataplane-ebpf` crate (empty
/// in `cargo fuzz` builds, which load no programs).
pub static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));
