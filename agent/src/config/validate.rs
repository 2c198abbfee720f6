//! Validation: what a config must hold beyond its shape, each problem one
//! sentence naming the field.

use dataplane_common::identity;
use fleetnet_store::names::{check_dns_label, check_label};
use ipnet::Ipv4Net;

use super::{AgentConfig, SourceSettings};

/// The largest Maglev table the agent accepts (Cilium's largest choice).
pub const MAGLEV_MAX: u32 = 131_071;

pub fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

impl AgentConfig {
    /// The observe listener is all or nothing: an address and every file
    /// of its mutual TLS, or neither.
    fn validate_relay_listen(&self) -> Result<(), String> {
        let observe = &self.observe;
        match (&observe.relay_listen[..], &observe.tls) {
            ("", None) => Ok(()),
            ("", Some(_)) => Err(
                "observe.tls is set but observe.relay-listen is empty; give the listener's \
                 address:port, or remove observe.tls"
                    .into(),
            ),
            (listen, _) if listen.parse::<std::net::SocketAddr>().is_err() => Err(format!(
                "observe.relay-listen {listen:?} is not an address:port (use \"\" to disable)"
            )),
            (_, Some(tls)) if tls.cert_file.is_some() && tls.key_file.is_some() => Ok(()),
            _ => Err(
                "observe.relay-listen needs observe.tls with ca-file, cert-file and key-file \
                 (fleetnet fleet ca issue --cluster NAME writes them)"
                    .into(),
            ),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
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
            check_label("cluster.labels", key, value)?;
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
        if let SourceSettings::Manifests { directory } = &self.source
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
        self.validate_relay_listen()?;
        let device = &self.tunnel.device;
        if device.is_empty() || device.len() > 15 || device.contains(['/', ' ']) {
            return Err(format!(
                "tunnel.device {device:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)"
            ));
        }
        if self.tunnel.port == 0 {
            return Err("tunnel.port must not be 0".into());
        }
        if let Some(mtu) = self.routing.underlay_mtu
            && mtu < 576
        {
            return Err(format!(
                "routing.underlay-mtu {mtu} is below IPv4's 576; give the underlay's real MTU (1500 on most networks)"
            ));
        }
        for peer in self.routing.peers.keys() {
            check_dns_label("routing.peers", peer)?;
            if *peer == self.cluster.name {
                return Err(format!(
                    "routing.peers names this cluster ({peer}); list other clusters only (routing.mode is this cluster's own)"
                ));
            }
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
pub(super) fn one_line(message: &str) -> String {
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

fn check_network(key: &str, cidr: &Ipv4Net) -> Result<(), String> {
    if cidr.addr() != cidr.network() {
        return Err(format!(
            "{key} {cidr} has host bits set; did you mean {}?",
            cidr.trunc()
        ));
    }
    Ok(())
}
