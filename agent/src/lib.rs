//! The fleetnet node agent: loads the eBPF datapath, attaches it to the
//! node's pods and tunnel device, publishes the node into the shared etcd
//! and programs the maps from what every cluster published.
//!
//! - [`config`]: the agent's configuration file;
//! - [`source`]: this cluster's objects, from Kubernetes or a manifests
//!   directory, and this node's pods;
//! - [`mesh`]: the shared keyspace: registration, this node's session and
//!   published keys, identities, the watch, and the validated mesh state;
//! - [`datapath`]: loading, pins, links, and the map programmers;
//! - [`services`]: global services: annotations, catalog, merge, Maglev;
//! - [`rollout_follower`]: the fleet revision this cluster targets;
//! - [`observe`], [`metrics`], [`api`]: flows, Prometheus metrics, and the
//!   HTTP endpoint `fleetnet status` and `observe` ask;
//! - [`agent`]: the loop that owns the parts above and runs them.

pub mod agent;
pub mod api;
pub mod config;
pub mod daemonset;
pub mod datapath;
pub mod mesh;
pub mod metrics;
pub mod observe;
pub mod privileges;
pub mod rollout_follower;
pub mod services;
pub mod source;
#[cfg(feature = "test-builds")]
pub mod test_build;

/// This build's version: the workspace's (Cargo.toml), as `fleetnet
/// --version`, the image tag, `fleetnet status` and `fleetnet_build_info`
/// say it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version this agent reports: [`VERSION`], or in a test build the
/// version it was told to be.
pub fn version() -> &'static str {
    #[cfg(feature = "test-builds")]
    if let Some(version) = test_build::version() {
        return version;
    }
    VERSION
}

/// The eBPF object built by build.rs from the `dataplane-ebpf` crate (empty
/// in `cargo fuzz` builds, which load no programs).
pub static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));
