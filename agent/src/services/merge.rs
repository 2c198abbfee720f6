//! One service across clusters: a frontend of this cluster's Service gets
//! its own cluster's ready backends and, when the service is global, those
//! every other cluster exports for the same namespace/name and port (by
//! port name, else number). Affinity picks a side while it has a ready
//! backend and fails over to the other when it has none, and back.
//!
//! Also here: which backends this node exports, one key each under its
//! lease (its own pods of shared global services), so a node that dies
//! takes exactly its backends with it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use dataplane_common::ServiceKey;

use fleetnet_store::{
    keys,
    records::{BackendRecord, Record, VERSION},
};

use crate::{
    mesh::state::RemoteBackend,
    services::{
        annotations::Affinity,
        catalog::{Catalog, LocalBackend, ServiceName},
    },
};

/// A backend in use, named for the Maglev table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActiveBackend {
    pub cluster_id: u16,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl ActiveBackend {
    /// Stable across nodes and agents, so every node builds the same table.
    pub fn name(&self) -> String {
        format!("{}/{}:{}", self.cluster_id, self.ip, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServiceName,
    /// Sorted, without duplicates.
    pub backends: Vec<ActiveBackend>,
}

/// Every frontend this node's datapath should serve.
pub fn frontends(
    catalog: &Catalog,
    local_cluster_id: u16,
    remote: impl Fn(&ServiceName) -> Vec<RemoteBackend>,
) -> BTreeMap<ServiceKey, Frontend> {
    let mut frontends = BTreeMap::new();
    for (name, service) in &catalog.services {
        let local_backends = catalog
            .backends
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let remote_backends = if service.global.is_some() {
            remote(name)
        } else {
            Vec::new()
        };
        for port in &service.ports {
            let local: Vec<ActiveBackend> = local_backends
                .iter()
                .filter(|backend| port.serves(backend))
                .map(|backend| ActiveBackend {
                    cluster_id: local_cluster_id,
                    ip: backend.ip,
                    port: backend.target_port,
                })
                .collect();
            let port_id = port.id();
            let remote_of = |cordoned: bool| -> Vec<ActiveBackend> {
                remote_backends
                    .iter()
                    .filter(|backend| backend.port_id == port_id && backend.cordoned == cordoned)
                    .map(|backend| ActiveBackend {
                        cluster_id: backend.cluster_id,
                        ip: backend.ip,
                        port: backend.port,
                    })
                    .collect()
            };
            // A cordoned cluster's backends take no new connections while
            // any other backend is left (as Kubernetes falls back to
            // terminating endpoints only when no ready one is left);
            // established ones keep theirs through conntrack.
            let mut others = remote_of(false);
            if local.is_empty() && others.is_empty() {
                others = remote_of(true);
            }
            let affinity = service
                .global
                .map(|global| global.affinity)
                .unwrap_or_default();
            let mut backends = match affinity {
                Affinity::None => [local, others].concat(),
                Affinity::Local if !local.is_empty() => local,
                Affinity::Remote if !others.is_empty() => others,
                Affinity::Local => others,
                Affinity::Remote => local,
            };
            backends.sort();
            backends.dedup();
            let key = ServiceKey {
                vip: service.vip.octets(),
                port: port.port.to_be(),
                protocol: port.protocol,
                _pad: 0,
            };
            frontends.insert(
                key,
                Frontend {
                    service: name.clone(),
                    backends,
                },
            );
        }
    }
    frontends
}

/// Which node of a cluster exports a backend: the one its EndpointSlice
/// names (`nodeName`); without one (optional in Kubernetes, usual in
/// slices written by hand or by controllers for backends outside pods),
/// the node whose pod CIDR holds its address, or the cluster's leader when
/// none does. A backend outside the cluster's pod CIDRs is exported by
/// nobody: every other cluster would refuse it.
pub struct Placement<'a> {
    /// This node.
    pub node: &'a str,
    /// Every node of this cluster with its pod CIDRs (its Node objects).
    pub nodes: &'a [(String, Vec<Ipv4Net>)],
    /// The cluster's pod CIDRs (`cluster.pod-cidrs`).
    pub cluster_cidrs: &'a [Ipv4Net],
    /// This node holds the cluster's leader key.
    pub leader: bool,
}

impl Placement<'_> {
    /// Whether this node exports `backend`; `None` when no node may.
    fn exports(&self, backend: &LocalBackend) -> Option<bool> {
        if let Some(node) = &backend.node {
            return Some(node == self.node);
        }
        let holder = self
            .nodes
            .iter()
            .find(|(_, cidrs)| cidrs.iter().any(|cidr| cidr.contains(&backend.ip)));
        match holder {
            Some((node, _)) => Some(node == self.node),
            None if self
                .cluster_cidrs
                .iter()
                .any(|cidr| cidr.contains(&backend.ip)) =>
            {
                Some(self.leader)
            }
            None => None,
        }
    }
}

/// What this node exports: the backend keys of the global, shared
/// services' ready backends [`Placement`] gives it, and the backends no
/// node may export (service, address).
#[derive(Debug, Default)]
pub struct Exports {
    pub keys: BTreeMap<String, Vec<u8>>,
    pub unexportable: Vec<(ServiceName, Ipv4Addr)>,
}

/// The backend keys this node publishes (see [`Placement`]).
pub fn exports(catalog: &Catalog, cluster: &str, placement: &Placement<'_>) -> Exports {
    let mut exports = Exports::default();
    let value = BackendRecord {
        v: VERSION,
        node: placement.node.into(),
    }
    .encode();
    for (name, service) in &catalog.services {
        if !service.global.is_some_and(|global| global.shared) {
            continue;
        }
        for backend in catalog.backends.get(name).into_iter().flatten() {
            match placement.exports(backend) {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    exports.unexportable.push((name.clone(), backend.ip));
                    continue;
                }
            }
            for port in service.ports.iter().filter(|port| port.serves(backend)) {
                let key = keys::backend(
                    &name.namespace,
                    &name.name,
                    cluster,
                    &port.id(),
                    backend.ip,
                    backend.target_port,
                );
                exports.keys.insert(key, value.clone());
            }
        }
    }
    exports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{services::catalog::Catalog, source::manifests::parse_documents};

    fn catalog(annotations: &str, ready: &[&str]) -> Catalog {
        let endpoints: String = ["10.1.1.11", "10.1.2.11"]
            .iter()
            .map(|ip| {
                format!(
                    "  - {{ addresses: [{ip}], conditions: {{ ready: {} }}, nodeName: n{} }}\n",
                    ready.contains(ip),
                    &ip[5..6]
                )
            })
            .collect();
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop, annotations: {{ {annotations} }} }}\n\
             spec: {{ clusterIP: 172.20.0.10, ports: [ {{ name: http, port: 80 }} ] }}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{ name: web-1, namespace: shop, labels: {{ kubernetes.io/service-name: web }} }}\n\
             addressType: IPv4\nports: [ {{ name: http, port: 8080 }} ]\nendpoints:\n{endpoints}"
        );
        Catalog::from_objects(parse_documents(&text).unwrap().iter())
    }

    fn remote(port_id: &str) -> impl Fn(&ServiceName) -> Vec<RemoteBackend> {
        let port_id = port_id.to_string();
        move |_| {
            vec![RemoteBackend {
                cluster: "c2".into(),
                cluster_id: 2,
                port_id: port_id.clone(),
                ip: Ipv4Addr::new(10, 2, 1, 11),
                port: 8080,
                cordoned: false,
            }]
        }
    }

    fn clusters_of(catalog: &Catalog, port_id: &str) -> Vec<u16> {
        let frontends = frontends(catalog, 1, remote(port_id));
        let frontend = frontends.values().next().unwrap();
        frontend.backends.iter().map(|b| b.cluster_id).collect()
    }

    const GLOBAL: &str = "service.cilium.io/global: 'true'";

    #[test]
    fn a_global_service_uses_every_clusters_backends_matched_by_port() {
        let both = catalog(GLOBAL, &["10.1.1.11", "10.1.2.11"]);
        assert_eq!(clusters_of(&both, "http.tcp"), [1, 1, 2]);
        assert_eq!(
            clusters_of(&both, "80.tcp"),
            [1, 1],
            "ports are matched by name"
        );
        let local_only = catalog("", &["10.1.1.11"]);
        assert_eq!(
            clusters_of(&local_only, "http.tcp"),
            [1],
            "not global: local backends only"
        );
        let frontends = frontends(&local_only, 1, remote("http.tcp"));
        let key = frontends.keys().next().unwrap();
        assert_eq!(
            (key.vip, u16::from_be(key.port), key.protocol),
            ([172, 20, 0, 10], 80, 6)
        );
    }

    #[test]
    fn affinity_prefers_a_side_and_fails_over_when_it_is_empty() {
        let local = format!("{GLOBAL}, service.cilium.io/affinity: local");
        assert_eq!(
            clusters_of(&catalog(&local, &["10.1.1.11"]), "http.tcp"),
            [1]
        );
        assert_eq!(
            clusters_of(&catalog(&local, &[]), "http.tcp"),
            [2],
            "no local backend: remote ones"
        );
        let remote_first = format!("{GLOBAL}, service.cilium.io/affinity: remote");
        assert_eq!(
            clusters_of(&catalog(&remote_first, &["10.1.1.11"]), "http.tcp"),
            [2]
        );
        assert_eq!(
            clusters_of(&catalog(&remote_first, &["10.1.1.11"]), "other.tcp"),
            [1],
            "no remote backend: local ones"
        );
    }

    /// c2 cordoned, c3 not: c2's backends only when nothing else is left.
    #[test]
    fn a_cordoned_clusters_backends_take_new_connections_only_when_none_else_is_left() {
        let remote = |cordoned_c3: bool| {
            move |_: &ServiceName| {
                [(2, true), (3, cordoned_c3)]
                    .into_iter()
                    .map(|(cluster, cordoned)| RemoteBackend {
                        cluster: format!("c{cluster}"),
                        cluster_id: cluster,
                        port_id: "http.tcp".into(),
                        ip: Ipv4Addr::new(10, cluster as u8, 1, 11),
                        port: 8080,
                        cordoned,
                    })
                    .collect()
            }
        };
        let clusters = |catalog: &Catalog, cordoned_c3: bool| -> Vec<u16> {
            let frontends = frontends(catalog, 1, remote(cordoned_c3));
            let frontend = frontends.values().next().unwrap();
            frontend.backends.iter().map(|b| b.cluster_id).collect()
        };
        let with_local = catalog(GLOBAL, &["10.1.1.11"]);
        assert_eq!(clusters(&with_local, false), [1, 3]);
        assert_eq!(clusters(&with_local, true), [1], "local ones are left");
        let no_local = catalog(GLOBAL, &[]);
        assert_eq!(clusters(&no_local, false), [3]);
        assert_eq!(
            clusters(&no_local, true),
            [2, 3],
            "every backend cordoned: still served, not black-holed"
        );
    }

    /// As node `node` of c1 (10.1.0.0/16), whose n1 holds 10.1.1.0/24 and
    /// n2 10.1.2.0/24.
    fn exported(catalog: &Catalog, node: &str, leader: bool) -> Exports {
        let nodes = vec![
            ("n1".to_string(), vec!["10.1.1.0/24".parse().unwrap()]),
            ("n2".to_string(), vec!["10.1.2.0/24".parse().unwrap()]),
        ];
        let cluster_cidrs = ["10.1.0.0/16".parse().unwrap()];
        exports(
            catalog,
            "c1",
            &Placement {
                node,
                nodes: &nodes,
                cluster_cidrs: &cluster_cidrs,
                leader,
            },
        )
    }

    fn keys_of(exports: Exports) -> Vec<String> {
        exports.keys.into_keys().collect()
    }

    #[test]
    fn a_node_exports_its_own_ready_backends_of_shared_global_services() {
        let both = catalog(GLOBAL, &["10.1.1.11", "10.1.2.11"]);
        assert_eq!(
            keys_of(exported(&both, "n1", false)),
            ["/fleetnet/v1/backends/c1/shop/web/http.tcp/10.1.1.11:8080"]
        );
        let unshared = catalog(
            &format!("{GLOBAL}, service.cilium.io/shared: 'false'"),
            &["10.1.1.11"],
        );
        assert!(exported(&unshared, "n1", false).keys.is_empty());
        assert!(
            exported(&catalog("", &["10.1.1.11"]), "n1", false)
                .keys
                .is_empty(),
            "not global, not exported"
        );
    }

    /// Without nodeName: the node whose pod CIDR holds the address, else
    /// the leader if the cluster's pod CIDRs hold it, else nobody (said).
    #[test]
    fn a_backend_without_a_node_name_is_exported_by_the_node_holding_its_address_or_the_leader() {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop, annotations: {{ {GLOBAL} }} }}\n\
             spec: {{ clusterIP: 172.20.0.10, ports: [ {{ name: http, port: 80 }} ] }}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{ name: web-1, namespace: shop, labels: {{ kubernetes.io/service-name: web }} }}\n\
             addressType: IPv4\nports: [ {{ name: http, port: 8080 }} ]\nendpoints:\n\
             \x20 - {{ addresses: [10.1.2.50], conditions: {{ ready: true }} }}\n\
             \x20 - {{ addresses: [10.1.9.50], conditions: {{ ready: true }} }}\n\
             \x20 - {{ addresses: [192.0.2.7], conditions: {{ ready: true }} }}\n"
        );
        let catalog = Catalog::from_objects(parse_documents(&text).unwrap().iter());
        let key = |ip: &str| format!("/fleetnet/v1/backends/c1/shop/web/http.tcp/{ip}:8080");
        assert_eq!(keys_of(exported(&catalog, "n2", false)), [key("10.1.2.50")]);
        assert_eq!(keys_of(exported(&catalog, "n1", true)), [key("10.1.9.50")]);
        assert!(exported(&catalog, "n1", false).keys.is_empty());
        let nobody = exported(&catalog, "n1", true).unexportable;
        assert_eq!(
            nobody
                .iter()
                .map(|(name, ip)| format!("{name} {ip}"))
                .collect::<Vec<_>>(),
            ["shop/web 192.0.2.7"]
        );
    }
}
