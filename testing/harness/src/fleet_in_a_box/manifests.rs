//! The clusters' "API servers": the manifests each cluster's agents read,
//! and each node's agent config.

use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use super::*;

impl FleetInABox {
    /// Writes (or replaces) NetworkPolicy `name` in namespace `default` of
    /// `cluster`, with `spec` as YAML (flow style); returns when.
    pub fn write_policy(&self, cluster: u16, name: &str, spec: &str) -> io::Result<Instant> {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{ name: {name}, namespace: default }}\nspec: {spec}\n"
        );
        write_atomically(&self.policy_path(cluster, name), &yaml)?;
        Ok(Instant::now())
    }

    /// Deletes NetworkPolicy `name` of `cluster`; returns when.
    pub fn delete_policy(&self, cluster: u16, name: &str) -> io::Result<Instant> {
        fs::remove_file(self.policy_path(cluster, name))?;
        Ok(Instant::now())
    }

    fn policy_path(&self, cluster: u16, name: &str) -> PathBuf {
        self.manifests_dir(cluster)
            .join(format!("networkpolicy-{name}.yaml"))
    }

    /// Writes (or replaces) Service `name` of `cluster`: ClusterIP `vip`,
    /// port 80 named `http` to target port 8080, with `annotations`.
    pub fn write_service(
        &self,
        cluster: u16,
        name: &str,
        vip: Ipv4Addr,
        annotations: &[(&str, &str)],
    ) -> io::Result<()> {
        write_atomically(
            &self
                .manifests_dir(cluster)
                .join(format!("service-{name}.yaml")),
            &service_yaml(name, vip, annotations),
        )
    }

    /// Writes (or replaces) the EndpointSlice of Service `name` in
    /// `cluster`: each pod (by id) with its readiness.
    pub fn write_endpoints(
        &self,
        cluster: u16,
        name: &str,
        pods: &[(&str, bool)],
    ) -> io::Result<()> {
        let endpoints: Vec<(Ipv4Addr, &str, bool)> = pods
            .iter()
            .map(|(id, ready)| {
                let (node, pod) = self
                    .pods()
                    .find(|(_, pod)| pod.id == *id)
                    .unwrap_or_else(|| panic!("no pod {id}"));
                (pod.ip, node.name.as_str(), *ready)
            })
            .collect();
        let yaml = endpoint_slice_yaml(name, &endpoints);
        write_atomically(
            &self
                .manifests_dir(cluster)
                .join(format!("endpoints-{name}.yaml")),
            &yaml,
        )
    }

    /// The agent config of `node`: only etcd, its cluster and its source.
    pub(super) fn agent_config(&self, node: &Node) -> String {
        let login = if self.spec.etcd_auth {
            format!(
                ", username: {}, password-file: '{}'",
                etcd_user(node.cluster_id),
                self.etcd_password_file(&etcd_user(node.cluster_id))
                    .display()
            )
        } else {
            String::new()
        };
        format!(
            "cluster: {{ name: {}, id: {}, pod-cidrs: [10.{}.0.0/16], labels: {} }}\n\
             node: {{ name: {} }}\n\
             etcd: {{ endpoints: [{}], lease-ttl-seconds: {}{login} }}\n\
             source: {{ kind: manifests, directory: {} }}\n\
             identities: {{ gc-grace-seconds: 10 }}\n\
             metrics: {{ listen: '{}:{METRICS_PORT}' }}\n\
             observe: {{ forward-sample: {} }}\n\
             services: {{ max-services: {} }}\n\
             routing: {}\n\
             bpf: {{ pin-dir: {}, ipcache-max-entries: {}, endpoints-max-entries: 1024, metrics-max-entries: 4096 }}\n",
            node.cluster,
            node.cluster_id,
            node.cluster_id,
            (self.spec.cluster_labels)(node.cluster_id),
            node.name,
            self.etcd_endpoints()
                .iter()
                .map(|endpoint| format!("'{endpoint}'"))
                .collect::<Vec<_>>()
                .join(", "),
            self.spec.lease_ttl_seconds,
            node.manifests.display(),
            node.ip,
            self.spec.forward_sample,
            self.spec.max_services,
            (self.spec.cluster_routing)(node.cluster_id),
            node.pin_dir.display(),
            self.spec.ipcache_max_entries
        )
    }

    /// Writes `yaml` as manifest `file` of `cluster` (atomically).
    pub fn write_manifest(&self, cluster: u16, file: &str, yaml: &str) -> io::Result<()> {
        write_atomically(&self.manifests_dir(cluster).join(file), yaml)
    }
}

impl Node {
    pub(super) fn pod_manifest(&self, pod: &str) -> PathBuf {
        self.manifests.join(format!("pod-{}-{pod}.yaml", self.name))
    }
}

/// Service `name` in namespace default: ClusterIP `vip`, port 80 named
/// `http` to target port 8080, with `annotations`.
pub fn service_yaml(name: &str, vip: Ipv4Addr, annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}: '{v}'"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\n\
         metadata: {{ name: {name}, namespace: default, annotations: {{ {} }} }}\n\
         spec: {{ clusterIP: {vip}, ports: [ {{ name: http, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT} }} ] }}\n",
        annotations.join(", ")
    )
}

/// The EndpointSlice of Service `name`: each endpoint's address, node
/// name and readiness.
pub fn endpoint_slice_yaml(name: &str, endpoints: &[(Ipv4Addr, &str, bool)]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(ip, node, ready)| {
            format!(
                "  - {{ addresses: [{ip}], conditions: {{ ready: {ready} }}, nodeName: {node} }}\n"
            )
        })
        .collect();
    let endpoints = if endpoints.is_empty() {
        " []\n".to_string()
    } else {
        format!("\n{}", endpoints.concat())
    };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{ name: {name}-fleet, namespace: default, labels: {{ kubernetes.io/service-name: {name} }} }}\n\
         addressType: IPv4\nports: [ {{ name: http, port: {BACKEND_PORT}, protocol: TCP }} ]\nendpoints:{endpoints}"
    )
}

pub(super) fn node_yaml(node: &Node) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{ name: {} }}\n\
         spec: {{ podCIDRs: [{}] }}\n\
         status: {{ addresses: [ {{ type: InternalIP, address: {} }} ] }}\n",
        node.name, node.pod_cidr, node.ip
    )
}

/// A pod's manifest; its container names port `http` (the backend port).
pub(super) fn pod_yaml(node: &Node, pod: &Pod) -> String {
    let labels: Vec<String> = pod
        .labels
        .iter()
        .map(|(k, v)| format!("{k}: '{v}'"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\n\
         metadata: {{ name: {}-{}, namespace: default, labels: {{ {} }} }}\n\
         spec: {{ nodeName: {}, containers: [ {{ name: app, image: none, \
         ports: [ {{ name: http, containerPort: {BACKEND_PORT} }} ] }} ] }}\n\
         status: {{ phase: Running, podIP: {} }}\n",
        node.name,
        pod.name,
        labels.join(", "),
        node.name,
        pod.ip
    )
}

/// Writes through a hidden temporary and a rename, so a reader never sees
/// half a file.
pub(super) fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("manifest");
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&temporary, text)?;
    fs::rename(temporary, path)
}
