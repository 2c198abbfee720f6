//! The agent's configuration file (YAML, kebab-case keys, as in Cilium's
//! ConfigMap). Parsing and validation happen together: a config that loads
//! is complete and consistent, so the agent never programs half of one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
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
    pub node: NodeConfig,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    #[serde(default)]
    pub bpf: BpfConfig,
    /// Local pods the agent attaches to (the Kubernetes and manifest
    /// sources replace this list).
    #[serde(default)]
    pub pods: Vec<PodConfig>,
    /// Other nodes of the mesh, in this cluster and others (the etcd mesh
    /// replaces this list).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    pub name: String,
    /// 1..=65535; also the VNI of every packet this cluster tunnels.
    pub id: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    pub name: String,
    /// Underlay address other nodes tunnel to.
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
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
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            root: default_bpf_root(),
            pin_dir: None,
            ipcache_max_entries: default_ipcache_max(),
            endpoints_max_entries: default_endpoints_max(),
            metrics_max_entries: default_metrics_max(),
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PodConfig {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

fn default_namespace() -> String {
    "default".into()
}

impl fmt::Display for PodConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.ip)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeerConfig {
    pub cluster: String,
    pub cluster_id: u16,
    pub node: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
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
        let config: Self = serde_yaml::from_str(text).map_err(|error| error.to_string())?;
        config.validate()?;
        Ok(config)
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
        check_dns_label("node.name", &self.node.name)?;
        check_network("node.pod-cidr", &self.node.pod_cidr)?;
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
        ] {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if !self.pin_dir().starts_with(&self.bpf.root) {
            return Err(format!(
                "bpf.pin-dir {} must lie inside bpf.root {}",
                self.pin_dir().display(),
                self.bpf.root.display()
            ));
        }
        self.validate_pods()?;
        self.validate_peers()
    }

    fn validate_pods(&self) -> Result<(), String> {
        let mut ips = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, pod) in self.pods.iter().enumerate() {
            check_dns_label(&format!("pods[{i}].name"), &pod.name)?;
            if !self.node.pod_cidr.contains(&pod.ip) {
                return Err(format!(
                    "pods[{i}] {pod} lies outside node.pod-cidr {}; a node only hosts pods of its own pod CIDR",
                    self.node.pod_cidr
                ));
            }
            if !ips.insert(pod.ip) {
                return Err(format!("pods[{i}] {pod} reuses an IP of an earlier pod"));
            }
            if !names.insert((&pod.namespace, &pod.name)) {
                return Err(format!("pods[{i}] {pod} is listed twice"));
            }
        }
        Ok(())
    }

    fn validate_peers(&self) -> Result<(), String> {
        let mut cidrs: Vec<(String, Ipv4Net)> = vec![("node.pod-cidr".into(), self.node.pod_cidr)];
        let mut cluster_ids: BTreeMap<&str, u16> = BTreeMap::new();
        cluster_ids.insert(&self.cluster.name, self.cluster.id);
        let mut nodes = BTreeSet::new();
        nodes.insert((self.cluster.name.as_str(), self.node.name.as_str()));
        for (i, peer) in self.peers.iter().enumerate() {
            let at = format!("peers[{i}]");
            check_dns_label(&format!("{at}.cluster"), &peer.cluster)?;
            check_dns_label(&format!("{at}.node"), &peer.node)?;
            if peer.cluster_id < identity::FIRST_CLUSTER_ID {
                return Err(format!("{at}.cluster-id must be between 1 and 65535"));
            }
            match cluster_ids.get(peer.cluster.as_str()) {
                Some(&id) if id != peer.cluster_id => {
                    return Err(format!(
                        "{at} gives cluster {} the id {}, but it was given id {id} before; a cluster has one id",
                        peer.cluster, peer.cluster_id
                    ));
                }
                _ => {}
            }
            if let Some((name, _)) = cluster_ids
                .iter()
                .find(|(name, id)| **id == peer.cluster_id && **name != peer.cluster)
            {
                return Err(format!(
                    "{at} gives cluster {} the id {}, which cluster {name} already has; cluster ids must be unique",
                    peer.cluster, peer.cluster_id
                ));
            }
            cluster_ids.insert(&peer.cluster, peer.cluster_id);
            if !nodes.insert((peer.cluster.as_str(), peer.node.as_str())) {
                return Err(format!(
                    "{at} lists node {}/{} twice",
                    peer.cluster, peer.node
                ));
            }
            if peer.ip == self.node.ip {
                return Err(format!("{at}.ip {} is this node's own ip", peer.ip));
            }
            check_network(&format!("{at}.pod-cidr"), &peer.pod_cidr)?;
            if let Some((other, cidr)) = cidrs
                .iter()
                .find(|(_, cidr)| cidr.contains(&peer.pod_cidr) || peer.pod_cidr.contains(cidr))
            {
                return Err(format!(
                    "{at}.pod-cidr {} overlaps {other} {cidr}; pod CIDRs must not overlap across the mesh",
                    peer.pod_cidr
                ));
            }
            cidrs.push((format!("{at}.pod-cidr"), peer.pod_cidr));
        }
        Ok(())
    }
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
cluster: { name: c1, id: 1 }
node: { name: n1, ip: 198.18.0.11, pod-cidr: 10.1.1.0/24 }
pods:
  - { name: web, ip: 10.1.1.2 }
peers:
  - { cluster: c1, cluster-id: 1, node: n2, ip: 198.18.0.12, pod-cidr: 10.1.2.0/24 }
  - { cluster: c2, cluster-id: 2, node: n1, ip: 198.18.0.21, pod-cidr: 10.2.1.0/24 }
";

    fn with(extra_from: &str, to: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(&VALID.replace(extra_from, to))
    }

    #[test]
    fn valid_config_parses_with_defaults() {
        let config = AgentConfig::parse(VALID).unwrap();
        assert_eq!(config.cluster.id, 1);
        assert_eq!(config.tunnel.device, "fleetnet_vxlan");
        assert_eq!(config.tunnel.port, 4789);
        assert_eq!(config.pods[0].namespace, "default");
        assert_eq!(config.pin_dir(), PathBuf::from("/sys/fs/bpf/fleetnet/n1"));
        assert_eq!(config.bpf.ipcache_max_entries, maps::IPCACHE_MAX_ENTRIES);
    }

    #[test]
    fn bad_configs_get_one_clear_sentence() {
        let cases = [
            (
                "id: 1 }",
                "id: 0 }",
                "cluster.id must be between 1 and 65535",
            ),
            (
                "name: c1,",
                "name: C_1,",
                "cluster.name \"C_1\" is not a valid name",
            ),
            (
                "10.1.1.0/24 }\npods",
                "10.1.1.1/24 }\npods",
                "has host bits set; did you mean 10.1.1.0/24?",
            ),
            (
                "ip: 10.1.1.2",
                "ip: 10.1.9.2",
                "lies outside node.pod-cidr 10.1.1.0/24",
            ),
            (
                "10.2.1.0/24",
                "10.1.0.0/16",
                "overlaps node.pod-cidr 10.1.1.0/24",
            ),
            (
                "cluster-id: 2",
                "cluster-id: 1",
                "which cluster c1 already has",
            ),
            (
                "ip: 198.18.0.21",
                "ip: 198.18.0.11",
                "is this node's own ip",
            ),
            ("node: { name", "nod: { name", "unknown field `nod`"),
            ("ip: 198.18.0.11", "ip: 198.18.0.300", "invalid"),
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
    fn duplicate_pods_and_nodes_are_refused() {
        let twice = VALID.replace(
            "  - { name: web, ip: 10.1.1.2 }",
            "  - { name: web, ip: 10.1.1.2 }\n  - { name: web, ip: 10.1.1.3 }",
        );
        assert!(
            AgentConfig::parse(&twice)
                .unwrap_err()
                .contains("listed twice")
        );
        let same_node = VALID.replace("node: n2", "node: n1");
        assert!(
            AgentConfig::parse(&same_node)
                .unwrap_err()
                .contains("lists node c1/n1 twice")
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
}
