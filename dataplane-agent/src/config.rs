//! The agent's configuration file (YAML, kebab-case keys, as in Cilium's
//! ConfigMap). Parsing and validation happen together: a config that loads
//! is complete and consistent, so the agent never programs half of one.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use dataplane_common::{identity, maps};
use ipnet::Ipv4Net;
use serde::Deserialize;

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
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub node: NodeConfig,
    pub etcd: EtcdConfig,
    pub source: SourceConfig,
    #[serde(default)]
    pub identities: IdentityConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub observe: ObserveConfig,
    #[serde(default)]
    pub services: ServicesConfig,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    #[serde(default)]
    pub bpf: BpfConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
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
pub struct NodeConfig {
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
pub struct EtcdConfig {
    /// Client URLs of the shared etcd (or of a per-cluster grpc-proxy).
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The etcd user this cluster's agents log in as, when etcd has
    /// authentication enabled; its role should let it write only this
    /// cluster's keys (README: "Isolating clusters in etcd").
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding that user's password (a mounted Secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Seconds this node's keys outlive the agent (its lease TTL).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_lease_ttl() -> u64 {
    30
}

/// Where this cluster's state comes from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
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
pub struct IdentityConfig {
    /// Identities no node uses are deleted after this many seconds.
    #[serde(default = "default_gc_grace")]
    pub gc_grace_seconds: u64,
}

impl Default for IdentityConfig {
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
pub struct ServicesConfig {
    /// Slots per service in the Maglev table; a prime, well above the
    /// largest backend count (about 100x keeps shares within 1%).
    #[serde(default = "default_maglev_size")]
    pub maglev_table_size: u32,
    /// How many service frontends (VIP, port, protocol) the datapath holds.
    #[serde(default = "default_max_services")]
    pub max_services: u32,
}

impl Default for ServicesConfig {
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

/// The largest Maglev table the agent accepts (Cilium's largest choice).
pub const MAGLEV_MAX: u32 = 131_071;

pub fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsConfig {
    /// Address of the Prometheus, health, status and flows endpoint;
    /// empty to disable.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ObserveConfig {
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
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            forward_sample: default_forward_sample(),
            events_per_second: default_events_per_second(),
            flows_kept: default_flows_kept(),
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

impl Default for MetricsConfig {
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
pub struct TunnelConfig {
    /// Name of the VXLAN collect_md device; created when missing.
    #[serde(default = "default_tunnel_device")]
    pub device: String,
    /// UDP destination port of the VXLAN device.
    #[serde(default = "default_tunnel_port")]
    pub port: u16,
}

impl Default for TunnelConfig {
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BpfConfig {
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

impl Default for BpfConfig {
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
        config.validate()?;
        Ok(config)
    }

    /// The etcd user to log in as, if any.
    pub fn etcd_credentials(&self) -> Option<crate::mesh::etcd::Credentials> {
        Some(crate::mesh::etcd::Credentials {
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

    fn validate(&self) -> Result<(), String> {
        check_dns_label("cluster.name", &self.cluster.name)?;
        if self.cluster.id < identity::FIRST_CLUSTER_ID {
            return Err("cluster.id must be between 1 and 65535".into());
        }
        if self.cluster.pod_cidrs.is_empty() {
            return Err("cluster.pod-cidrs must list the cluster's pod CIDRs".into());
        }
        for (i, cidr) in self.cluster.pod_cidrs.iter().enumerate() {
            check_network(&format!("cluster.pod-cidrs[{i}]"), cidr)?;
            if let Some(other) = self.cluster.pod_cidrs[..i]
                .iter()
                .find(|o| o.contains(cidr) || cidr.contains(*o))
            {
                return Err(format!("cluster.pod-cidrs[{i}] {cidr} overlaps {other}"));
            }
        }
        for (key, value) in &self.cluster.labels {
            check_label(key, value)?;
        }
        check_dns_label("node.name", &self.node.name)?;
        if let Some(cidr) = &self.node.pod_cidr {
            check_network("node.pod-cidr", cidr)?;
            if !self
                .cluster
                .pod_cidrs
                .iter()
                .any(|outer| outer.contains(cidr))
            {
                return Err(format!(
                    "node.pod-cidr {cidr} lies outside cluster.pod-cidrs"
                ));
            }
        }
        self.validate_etcd()?;
        if let SourceConfig::Manifests { directory } = &self.source
            && directory.as_os_str().is_empty()
        {
            return Err("source.directory must name the manifests directory".into());
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!(
                "metrics.listen {:?} is not an address:port (use \"\" to disable)",
                self.metrics.listen
            ));
        }
        let device = &self.tunnel.device;
        if device.is_empty() || device.len() > 15 || device.contains(['/', ' ']) {
            return Err(format!(
                "tunnel.device {device:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)"
            ));
        }
        if self.tunnel.port == 0 {
            return Err("tunnel.port must not be 0".into());
        }
        for (key, value) in [
            ("bpf.ipcache-max-entries", self.bpf.ipcache_max_entries),
            ("bpf.endpoints-max-entries", self.bpf.endpoints_max_entries),
            ("bpf.metrics-max-entries", self.bpf.metrics_max_entries),
            ("bpf.backends-max-entries", self.bpf.backends_max_entries),
            ("bpf.conntrack-max-entries", self.bpf.conntrack_max_entries),
            ("bpf.policy-max-entries", self.bpf.policy_max_entries),
            ("services.max-services", self.services.max_services),
            ("observe.events-per-second", self.observe.events_per_second),
            ("observe.flows-kept", self.observe.flows_kept),
        ] {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        let size = self.services.maglev_table_size;
        if !(7..=MAGLEV_MAX).contains(&size) || !is_prime(size) {
            return Err(format!(
                "services.maglev-table-size {size} must be a prime between 7 and {MAGLEV_MAX} (e.g. 1021, 16381)"
            ));
        }
        if (u64::from(self.services.max_services) + 1) * u64::from(size) > u64::from(u32::MAX / 4) {
            return Err(
                "services.max-services times services.maglev-table-size is too large for one map"
                    .into(),
            );
        }
        if !self.pin_dir().starts_with(&self.bpf.root) {
            return Err(format!(
                "bpf.pin-dir {} must lie inside bpf.root {}",
                self.pin_dir().display(),
                self.bpf.root.display()
            ));
        }
        Ok(())
    }

    fn validate_etcd(&self) -> Result<(), String> {
        if self.etcd.endpoints.is_empty() {
            return Err("etcd.endpoints must list at least one etcd client URL".into());
        }
        for (i, endpoint) in self.etcd.endpoints.iter().enumerate() {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .ok_or_else(|| {
                    format!("etcd.endpoints[{i}] {endpoint:?} must start with http:// or https://")
                })?;
            let (host, port) = rest.trim_end_matches('/').rsplit_once(':').ok_or_else(|| {
                format!("etcd.endpoints[{i}] {endpoint:?} needs a port, e.g. http://etcd:2379")
            })?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!(
                    "etcd.endpoints[{i}] {endpoint:?} is not a host:port URL"
                ));
            }
            if endpoint.starts_with("https://") && self.etcd.tls.is_none() {
                return Err(format!(
                    "etcd.endpoints[{i}] uses https but etcd.tls.ca-file is not set"
                ));
            }
        }
        if let Some(tls) = &self.etcd.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err("etcd.tls.cert-file and etcd.tls.key-file go together".into());
        }
        match (&self.etcd.username, &self.etcd.password_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err("etcd.username and etcd.password-file go together".into());
            }
            (Some(user), Some(_)) if user.is_empty() || user.contains(char::is_whitespace) => {
                return Err(format!(
                    "etcd.username {user:?} is not a user name (non-empty, no spaces)"
                ));
            }
            _ => {}
        }
        if self.etcd.lease_ttl_seconds < 2 {
            return Err("etcd.lease-ttl-seconds must be at least 2".into());
        }
        Ok(())
    }
}

/// serde_yaml's errors quote what the file says, control characters and
/// all; escaped, the error stays one line.
fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn check_dns_label(key: &str, value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{key} {value:?} is not a valid name (lowercase letters, digits and '-', at most 63, as in Kubernetes)"
        ))
    }
}

/// A label as Kubernetes allows it (the name part of the key, and the
/// value): at most 63 of letters, digits, '-', '_', '.', alphanumeric at
/// both ends; values may be empty.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    let fits = |text: &str| {
        text.len() <= 63
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && text
                .chars()
                .next()
                .is_none_or(|c| c.is_ascii_alphanumeric())
            && text
                .chars()
                .last()
                .is_none_or(|c| c.is_ascii_alphanumeric())
    };
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    if name.is_empty() || !fits(name) {
        return Err(format!(
            "cluster.labels key {key:?} is not a valid label key (letters, digits, '-', '_', '.', at most 63, optionally prefix/)"
        ));
    }
    if !fits(value) {
        return Err(format!(
            "cluster.labels value {value:?} of {key} is not a valid label value (letters, digits, '-', '_', '.', at most 63)"
        ));
    }
    Ok(())
}

fn check_network(key: &str, cidr: &Ipv4Net) -> Result<(), String> {
    if cidr.addr() != cidr.network() {
        return Err(format!(
            "{key} {cidr} has host bits set; did you mean {}?",
            cidr.trunc()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "
cluster: { name: c1, id: 1, pod-cidrs: [10.1.0.0/16] }
node: { name: n1 }
etcd: { endpoints: [http://198.18.0.2:2379], lease-ttl-seconds: 10 }
source: { kind: manifests, directory: /etc/fleetnet/manifests }
";

    fn with(from: &str, to: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(&VALID.replace(from, to))
    }

    #[test]
    fn the_node_name_may_come_from_the_environment() {
        let without = VALID.replace("node: { name: n1 }\n", "");
        let env = |name: &str| (name == NODE_NAME_VARIABLE).then(|| "worker-7".to_string());
        let config = AgentConfig::parse_with(&without, env).unwrap();
        assert_eq!(config.node.name, "worker-7");
        // The config's own name wins.
        let config = AgentConfig::parse_with(VALID, env).unwrap();
        assert_eq!(config.node.name, "n1");
        let error = AgentConfig::parse_with(&without, |_| None).unwrap_err();
        assert!(error.starts_with("node.name is missing"), "{error}");
    }

    #[test]
    fn valid_config_parses_with_defaults() {
        let config = AgentConfig::parse(VALID).unwrap();
        assert_eq!(config.cluster.id, 1);
        assert_eq!(config.node.ip, None);
        assert_eq!(config.tunnel.device, "fleetnet_vxlan");
        assert_eq!(config.tunnel.port, 4789);
        assert_eq!(config.etcd.lease_ttl_seconds, 10);
        assert_eq!(config.identities.gc_grace_seconds, 600);
        assert_eq!(config.metrics.listen, "127.0.0.1:9962");
        assert_eq!(config.pin_dir(), PathBuf::from("/sys/fs/bpf/fleetnet/n1"));
        assert_eq!(
            config.source,
            SourceConfig::Manifests {
                directory: "/etc/fleetnet/manifests".into()
            }
        );
        let kube = with(
            "{ kind: manifests, directory: /etc/fleetnet/manifests }",
            "{ kind: kube }",
        )
        .unwrap();
        assert_eq!(kube.source, SourceConfig::Kube { kubeconfig: None });
    }

    #[test]
    fn bad_configs_get_one_clear_sentence() {
        let cases = [
            ("id: 1,", "id: 0,", "cluster.id must be between 1 and 65535"),
            // Found by the `config` fuzz target: the unknown key's newline
            // was quoted as it is.
            (
                "id: 1,",
                "id: 1, \"pod\\ncidrs\": [],",
                "cluster: unknown field `pod\\ncidrs`",
            ),
            (
                "id: 1,",
                "id: 1, labels: { env: 'prod ring' },",
                "cluster.labels value \"prod ring\" of env is not a valid label value",
            ),
            (
                "name: c1,",
                "name: C_1,",
                "cluster.name \"C_1\" is not a valid name",
            ),
            (
                "[10.1.0.0/16]",
                "[10.1.0.1/16]",
                "has host bits set; did you mean 10.1.0.0/16?",
            ),
            (
                "[10.1.0.0/16]",
                "[10.1.0.0/16, 10.1.4.0/24]",
                "cluster.pod-cidrs[1] 10.1.4.0/24 overlaps 10.1.0.0/16",
            ),
            ("[10.1.0.0/16]", "[]", "cluster.pod-cidrs must list"),
            (
                "{ name: n1 }",
                "{ name: n1, pod-cidr: 10.9.1.0/24 }",
                "node.pod-cidr 10.9.1.0/24 lies outside cluster.pod-cidrs",
            ),
            (
                "[http://198.18.0.2:2379]",
                "[198.18.0.2:2379]",
                "must start with http:// or https://",
            ),
            ("[http://198.18.0.2:2379]", "[http://etcd]", "needs a port"),
            (
                "[http://198.18.0.2:2379]",
                "[https://etcd:2379]",
                "uses https but etcd.tls.ca-file is not set",
            ),
            (
                "lease-ttl-seconds: 10",
                "lease-ttl-seconds: 1",
                "etcd.lease-ttl-seconds must be at least 2",
            ),
            (
                "lease-ttl-seconds: 10",
                "lease-ttl-seconds: 10, username: c1",
                "etcd.username and etcd.password-file go together",
            ),
            (
                "lease-ttl-seconds: 10",
                "lease-ttl-seconds: 10, password-file: /etc/fleetnet/etcd/password",
                "etcd.username and etcd.password-file go together",
            ),
            (
                "lease-ttl-seconds: 10",
                "lease-ttl-seconds: 10, username: '', password-file: /p",
                "etcd.username \"\" is not a user name",
            ),
            ("kind: manifests", "kind: files", "unknown variant `files`"),
            ("directory: /etc", "dir: /etc", "unknown field `dir`"),
            ("node: { name", "nod: { name", "unknown field `nod`"),
        ];
        for (from, to, expected) in cases {
            let error = with(from, to).expect_err(to);
            assert!(
                error.contains(expected),
                "{to}: got {error:?}, want {expected:?}"
            );
            assert!(!error.contains('\n'), "multi-line error: {error:?}");
        }
    }

    #[test]
    fn etcd_credentials_are_a_user_and_a_password_file() {
        assert_eq!(AgentConfig::parse(VALID).unwrap().etcd_credentials(), None);
        let config = with(
            "lease-ttl-seconds: 10",
            "lease-ttl-seconds: 10, username: c1, password-file: /etc/fleetnet/etcd/password",
        )
        .unwrap();
        assert_eq!(
            config.etcd_credentials(),
            Some(crate::mesh::etcd::Credentials {
                username: "c1".into(),
                password_file: "/etc/fleetnet/etcd/password".into(),
            })
        );
    }

    #[test]
    fn pin_dir_must_be_on_bpffs_root() {
        let outside = format!("{VALID}bpf: {{ pin-dir: /tmp/x }}\n");
        assert!(
            AgentConfig::parse(&outside)
                .unwrap_err()
                .contains("must lie inside bpf.root")
        );
    }

    /// The largest numbers a field takes are refused as such, not
    /// overflowed on the way (a wrapped product passed the map size check)
    /// nor tested for primality for seconds.
    #[test]
    fn the_largest_numbers_are_refused_at_once() {
        let services = |fields: &str| {
            AgentConfig::parse(&format!("{VALID}services: {{ {fields} }}\n")).unwrap_err()
        };
        assert_eq!(
            services("max-services: 4294967295"),
            "services.max-services times services.maglev-table-size is too large for one map"
        );
        let started = std::time::Instant::now();
        assert!(services("maglev-table-size: 4294967291").starts_with(
            "services.maglev-table-size 4294967291 must be a prime between 7 and 131071"
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(is_prime(4_294_967_291) && !is_prime(4_294_967_295));
    }

    #[test]
    fn the_documented_example_parses() {
        let readme = include_str!("../../README.md");
        let example = readme
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README has a YAML config example");
        AgentConfig::parse(example).unwrap_or_else(|error| panic!("README example: {error}"));
    }
}
