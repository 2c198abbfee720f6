//! Types shared by fleetnet's eBPF programs and its agent.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, and its
//! size is asserted at compile time, so the kernel and userspace views of a
//! map can never drift apart silently. Enumerations are stored in maps as
//! plain integers; the typed enums here only convert to and from them.
#![no_std]

pub mod endpoint;
pub mod identity;
pub mod ipcache;
pub mod maps;
pub mod metrics;
pub mod node;
pub mod reason;

pub use endpoint::EndpointInfo;
pub use ipcache::{IpKey, IpcacheEntry};
pub use metrics::{MetricsKey, MetricsValue};
pub use node::NodeConfig;
pub use reason::{Direction, DropReason, Verdict};

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
}
