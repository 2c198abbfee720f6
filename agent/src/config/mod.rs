//! The agent's configuration file (YAML, kebab-case keys, as in Cilium's
//! ConfigMap). Parsing and validation happen together: a config that loads
//! is complete and consistent, so the agent never programs half of one
//! ([`validate`]).

mod restart;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use dataplane_common::maps;
use fleetnet_store::{Credentials, TlsFiles, records::RoutingMode};
use ipnet::Ipv4Net;
use serde::Deserialize;

use self::validate::one_line;
pub use self::{
    restart::{DaemonSetSettings, IMAGE_VARIABLE, SETTINGS_VARIABLE},
    validate::{MAGLEV_MAX, is_prime},
};
pub use crate::source::export::ExportMode;

/// A configuration error: what was wrong and where, in one sentence.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    pub cluster: ClusterSettings,
    #[serde(default)]
    pub node: NodeSettings,
    pub etcd: EtcdSettings,
    pub source: SourceSettings,
    #[serde(default)]
    pub identities: IdentitySettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub observe: ObserveSettings,
    #[serde(default)]
    pub services: ServicesSettings,
    #[serde(default)]
    pub tunnel: TunnelSettings,
    #[serde(default)]
    pub routing: RoutingSettings,
    #[serde(default)]
    pub mesh: MeshSettings,
    #[serde(default)]
    pub bpf: BpfSettings,
    #[serde(default)]
    pub daemonset: DaemonSetSettings,
    /// The image this agent was started from (`FLEETNET_IMAGE`; empty
    /// when not set), which its fleet report names.
    #[serde(skip)]
    pub image: String,
}

/// What this cluster shares with the rest of the mesh.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MeshSettings {
    /// Which namespaces' pods other clusters see by their identities:
    /// `all` (the default; a namespace annotated
    /// `clustermesh.cilium.io/global: "false"` stays in) or `annotated`
    /// (only namespaces annotated `"true"`). Pods of namespaces not
    /// exported are still reached, as pods of this cluster.
    #[serde(default)]
    pub export: ExportMode,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSettings {
    pub name: String,
    /// 1..=65535; also the VNI of every packet this cluster tunnels and the
    /// high 16 bits of its identities.
    pub id: u16,
    /// Every pod address of the cluster; published with its registration
    /// and checked against other clusters' (no overlaps).
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Labels rollout stages select clusters by (e.g. `env: canary`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSettings {
    /// This node's name in the source; when left out, the environment's
    /// `FLEETNET_NODE_NAME` (a DaemonSet sets it from `spec.nodeName`).
    #[serde(default)]
    pub name: String,
    /// Underlay address other nodes tunnel to; taken from the source's Node
    /// object (its InternalIP) when not set.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Taken from the source's Node object (spec.podCIDRs) when not set.
    #[serde(default)]
    pub pod_cidr: Option<Ipv4Net>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EtcdSettings {
    /// Client URLs of the shared etcd (or of a per-cluster grpc-proxy).
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The etcd user this cluster's agents log in as, when etcd has
    /// authentication enabled; its role should let it write only this
    /// cluster's keys (docs/operations.md: "Isolating clusters in etcd").
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding that user's password (a mounted Secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Seconds this node's keys outlive the agent (its lease TTL).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_seconds: u64,
}

fn default_lease_ttl() -> u64 {
    30
}

/// Where this cluster's state comes from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceSettings {
    /// A Kubernetes API server: in-cluster, or through a kubeconfig.
    Kube {
        #[serde(default)]
        kubeconfig: Option<PathBuf>,
    },
    /// A directory of Kubernetes YAML, re-read when it changes.
    Manifests { directory: PathBuf },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IdentitySettings {
    /// Identities no node uses are deleted after this many seconds.
    #[serde(default = "default_gc_grace")]
    pub gc_grace_seconds: u64,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            gc_grace_seconds: default_gc_grace(),
        }
    }
}

fn default_gc_grace() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServicesSettings {
    /// Slots per service in the Maglev table; a prime, well above the
    /// largest backend count (about 100x keeps shares within 1%).
    #[serde(default = "default_maglev_size")]
    pub maglev_table_size: u32,
    /// How many service frontends (VIP, port, protocol) the datapath holds.
    #[serde(default = "default_max_services")]
    pub max_services: u32,
}

impl Default for ServicesSettings {
    fn default() -> Self {
        Self {
            maglev_table_size: default_maglev_size(),
            max_services: default_max_services(),
        }
    }
}

fn default_maglev_size() -> u32 {
    maps::MAGLEV_TABLE_SIZE
}

fn default_max_services() -> u32 {
    maps::MAX_SERVICE_IDS
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsSettings {
    /// Address of the Prometheus, health, status and flows endpoint;
    /// empty to disable.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ObserveSettings {
    /// One forwarded packet in this many (on average) becomes a flow
    /// event; 0 sends drops only.
    #[serde(default = "default_forward_sample")]
    pub forward_sample: u16,
    /// Flow events the agent takes from the datapath per second at most;
    /// the rest are counted and dropped, so a flood cannot stall it.
    #[serde(default = "default_events_per_second")]
    pub events_per_second: u32,
    /// Recent flows kept for `fleetnet observe`.
    #[serde(default = "default_flows_kept")]
    pub flows_kept: u32,
    /// Address of the listener that serves `/status` and `/flows` to the
    /// relay (`fleetnet relay`) over mutual TLS; empty (the default) to
    /// serve them to this node only, on `metrics.listen`.
    #[serde(default)]
    pub relay_listen: String,
    /// The listener's certificate (for `<cluster>.agents.fleetnet`) and
    /// the fleet CA that signed the relay's; required with `relay-listen`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

impl Default for ObserveSettings {
    fn default() -> Self {
        Self {
            forward_sample: default_forward_sample(),
            events_per_second: default_events_per_second(),
            flows_kept: default_flows_kept(),
            relay_listen: String::new(),
            tls: None,
        }
    }
}

fn default_forward_sample() -> u16 {
    100
}
fn default_events_per_second() -> u32 {
    10_000
}
fn default_flows_kept() -> u32 {
    4_096
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

/// Names the node when the config does not.
pub const NODE_NAME_VARIABLE: &str = "FLEETNET_NODE_NAME";

/// All addresses inside a Kubernetes pod (the DaemonSet runs in the host
/// network, where Prometheus scrapes the node), loopback only elsewhere.
fn default_metrics_listen() -> String {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        "0.0.0.0:9962".into()
    } else {
        "127.0.0.1:9962".into()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TunnelSettings {
    /// Name of the VXLAN collect_md device; created when missing.
    #[serde(default = "default_tunnel_device")]
    pub device: String,
    /// UDP destination port of the VXLAN device.
    #[serde(default = "default_tunnel_port")]
    pub port: u16,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            device: default_tunnel_device(),
            port: default_tunnel_port(),
        }
    }
}

fn default_tunnel_device() -> String {
    "fleetnet_vxlan".into()
}

fn default_tunnel_port() -> u16 {
    4789
}

/// How this cluster's pods reach other clusters' pods, and the underlay
/// they cross.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoutingSettings {
    /// `tunnel` (VXLAN; any underlay) or `native` (unencapsulated, where
    /// the underlay routes every cluster's pod CIDRs). Used towards a
    /// cluster only when that cluster publishes the same towards this one;
    /// otherwise both tunnel and report a mismatch.
    #[serde(default)]
    pub mode: RoutingMode,
    /// Exceptions by peer cluster name, e.g. native inside one cloud and
    /// `other-cloud: tunnel`.
    #[serde(default)]
    pub peers: BTreeMap<String, RoutingMode>,
    /// The MTU of the underlay between nodes; by default the MTU of the
    /// interface holding this node's address. Pods' packets larger than it
    /// (less the tunnel's 50 bytes when tunnelled) are answered with ICMP
    /// "fragmentation needed", never fragmented.
    #[serde(default)]
    pub underlay_mtu: Option<u16>,
}

impl RoutingSettings {
    /// Whether any peer may be reached natively (the uplink then needs
    /// its program).
    pub fn uses_native(&self) -> bool {
        self.mode == RoutingMode::Native || self.peers.values().any(|m| *m == RoutingMode::Native)
    }

    /// Whether every peer is reached natively (pods may then use the
    /// underlay's whole MTU), as far as this cluster decides.
    pub fn only_native(&self) -> bool {
        self.mode == RoutingMode::Native && self.peers.values().all(|m| *m == RoutingMode::Native)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BpfSettings {
    /// Mount point of the BPF filesystem; mounted when it is not one yet.
    #[serde(default = "default_bpf_root")]
    pub root: PathBuf,
    /// Where this node's maps are pinned; defaults to `<root>/fleetnet/<node>`.
    #[serde(default)]
    pub pin_dir: Option<PathBuf>,
    #[serde(default = "default_ipcache_max")]
    pub ipcache_max_entries: u32,
    #[serde(default = "default_endpoints_max")]
    pub endpoints_max_entries: u32,
    #[serde(default = "default_metrics_max")]
    pub metrics_max_entries: u32,
    #[serde(default = "default_backends_max")]
    pub backends_max_entries: u32,
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max_entries: u32,
    #[serde(default = "default_policy_max")]
    pub policy_max_entries: u32,
}

impl Default for BpfSettings {
    fn default() -> Self {
        Self {
            root: default_bpf_root(),
            pin_dir: None,
            ipcache_max_entries: default_ipcache_max(),
            endpoints_max_entries: default_endpoints_max(),
            metrics_max_entries: default_metrics_max(),
            backends_max_entries: default_backends_max(),
            conntrack_max_entries: default_conntrack_max(),
            policy_max_entries: default_policy_max(),
        }
    }
}

fn default_bpf_root() -> PathBuf {
    "/sys/fs/bpf".into()
}
fn default_ipcache_max() -> u32 {
    maps::IPCACHE_MAX_ENTRIES
}
fn default_endpoints_max() -> u32 {
    maps::ENDPOINTS_MAX_ENTRIES
}
fn default_metrics_max() -> u32 {
    maps::METRICS_MAX_ENTRIES
}
fn default_backends_max() -> u32 {
    maps::BACKENDS_MAX_ENTRIES
}
fn default_conntrack_max() -> u32 {
    maps::CONNTRACK_MAX_ENTRIES
}
fn default_policy_max() -> u32 {
    maps::POLICY_MAX_ENTRIES
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: file.clone(),
            message: format!("cannot read it: {error}"),
        })?;
        Self::parse(&text).map_err(|message| ConfigError { file, message })
    }

    /// Parses and validates config text; the error is a sentence without
    /// the file name.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_with(text, |name| std::env::var(name).ok())
    }

    /// [`AgentConfig::parse`], with `env` standing for the environment.
    pub fn parse_with(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut config: Self =
            serde_yaml::from_str(text).map_err(|error| one_line(&error.to_string()))?;
        if config.node.name.is_empty() {
            config.node.name = env(NODE_NAME_VARIABLE).ok_or(
                "node.name is missing: set it, or the FLEETNET_NODE_NAME environment variable (in a DaemonSet, from spec.nodeName)",
            )?;
        }
        if let Some(json) = env(SETTINGS_VARIABLE) {
            config.overlay_restart_settings(&json)?;
        }
        config.image = env(IMAGE_VARIABLE).unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    /// The etcd user to log in as, if any.
    pub fn etcd_credentials(&self) -> Option<Credentials> {
        Some(Credentials {
            username: self.etcd.username.clone()?,
            password_file: self.etcd.password_file.clone()?,
        })
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpf
            .pin_dir
            .clone()
            .unwrap_or_else(|| self.bpf.root.join("fleetnet").join(&self.node.name))
    }
}
