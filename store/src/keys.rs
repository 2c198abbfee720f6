//! The shared etcd keyspace, under `/fleetnet/v1/`. One function per key
//! kind builds a key; [`parse`] reads one back. Keys carry the cluster
//! name so that per-cluster credentials can be scoped by prefix.

use std::net::Ipv4Addr;

pub const PREFIX: &str = "/fleetnet/v1/";

/// Keys only the cluster's own agents read (its role grants them; no other
/// cluster's does): what the cluster does not export, and the bookkeeping
/// of its identities. Outside [`PREFIX`], so other clusters' mesh watches
/// never carry them.
pub const LOCAL_PREFIX: &str = "/fleetnet/local/v1/";

/// Every key only `cluster`'s agents read.
pub fn local_of(cluster: &str) -> String {
    format!("{LOCAL_PREFIX}{cluster}/")
}

/// Pods of `cluster` in namespaces it does not export: its own nodes need
/// their identities, no other cluster sees them.
pub fn local_endpoints_of(cluster: &str) -> String {
    format!("{}endpoints/", local_of(cluster))
}

pub fn local_endpoint(cluster: &str, ip: Ipv4Addr) -> String {
    format!("{}{ip}", local_endpoints_of(cluster))
}

pub fn cluster(name: &str) -> String {
    format!("{PREFIX}clusters/{name}")
}

/// The claim on a cluster id, written with the cluster record in one txn.
pub fn cluster_id(id: u16) -> String {
    format!("{PREFIX}cluster-ids/{id}")
}

pub fn node(cluster: &str, node: &str) -> String {
    format!("{PREFIX}nodes/{cluster}/{node}")
}

pub fn endpoints_of(cluster: &str) -> String {
    format!("{PREFIX}endpoints/{cluster}/")
}

pub fn endpoint(cluster: &str, ip: Ipv4Addr) -> String {
    format!("{}{ip}", endpoints_of(cluster))
}

/// The master records of `cluster`'s identities (their labels), among its
/// local keys: its own agents allocate and read them.
pub fn identities_of(cluster: &str) -> String {
    format!("{}identities/", local_of(cluster))
}

pub fn identity(cluster: &str, id: u32) -> String {
    format!("{}{id}", identities_of(cluster))
}

/// What other clusters know of `cluster`'s identities: those of the pods
/// it exports.
pub fn exported_identities_of(cluster: &str) -> String {
    format!("{PREFIX}identities/{cluster}/")
}

/// Identity `id` (its labels), as node `node` of `cluster` exports it,
/// under that node's lease: one key per node using it, so that it stays
/// while any of them does.
pub fn exported_identity(cluster: &str, id: u32, node: &str) -> String {
    format!("{}{id}/{node}", exported_identities_of(cluster))
}

/// Labels hash -> id, so equal label sets find their id in one read.
pub fn identity_index(cluster: &str, labels_hash: &str) -> String {
    format!("{}identity-index/{labels_hash}", local_of(cluster))
}

pub fn identity_refs_of(cluster: &str) -> String {
    format!("{}identity-refs/", local_of(cluster))
}

/// A node's use of an identity, under that node's lease.
pub fn identity_ref(cluster: &str, id: u32, node: &str) -> String {
    format!("{}{id}/{node}", identity_refs_of(cluster))
}

pub fn backends_of(cluster: &str) -> String {
    format!("{PREFIX}backends/{cluster}/")
}

/// One ready endpoint of a service port, exported by `cluster`. The
/// cluster comes first, as in every other kind, so that a role can grant
/// a cluster its own backends by prefix.
pub fn backend(
    namespace: &str,
    service: &str,
    cluster: &str,
    port_id: &str,
    ip: Ipv4Addr,
    port: u16,
) -> String {
    format!(
        "{}{namespace}/{service}/{port_id}/{ip}:{port}",
        backends_of(cluster)
    )
}

pub fn members() -> String {
    format!("{PREFIX}members/")
}

/// A member of the fleet, as `fleetnet cluster join` recorded it: written
/// only by the fleet's admin (no cluster role grants it), read by every
/// agent, which stops choosing a cordoned cluster's backends and stops
/// itself when its own cluster is retired.
pub fn member(name: &str) -> String {
    format!("{}{name}", members())
}

/// The claim on a cluster id by a member, written with the member in one
/// transaction (not a mesh key agents read: [`parse`] skips it).
pub fn member_id(id: u16) -> String {
    format!("{PREFIX}member-ids/{id}")
}

/// Held by the agent elected to write the cluster-wide keys.
pub fn leader(cluster: &str) -> String {
    format!("{PREFIX}leaders/{cluster}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Cluster {
        name: String,
    },
    ClusterId {
        id: u16,
    },
    Node {
        cluster: String,
        node: String,
    },
    Endpoint {
        cluster: String,
        ip: Ipv4Addr,
        /// In the shared keyspace, not among the cluster's local keys.
        exported: bool,
    },
    Identity {
        cluster: String,
        id: u32,
    },
    ExportedIdentity {
        cluster: String,
        id: u32,
        node: String,
    },
    IdentityIndex {
        cluster: String,
        hash: String,
    },
    IdentityRef {
        cluster: String,
        id: u32,
        node: String,
    },
    Leader {
        cluster: String,
    },
    Backend {
        namespace: String,
        service: String,
        cluster: String,
        port_id: String,
        ip: Ipv4Addr,
        port: u16,
    },
    Member {
        name: String,
    },
}

impl Key {
    /// The cluster the key belongs to (all but cluster id claims).
    pub fn cluster(&self) -> Option<&str> {
        match self {
            Key::Cluster { name } => Some(name),
            Key::ClusterId { .. } => None,
            Key::Node { cluster, .. }
            | Key::Endpoint { cluster, .. }
            | Key::Identity { cluster, .. }
            | Key::ExportedIdentity { cluster, .. }
            | Key::IdentityIndex { cluster, .. }
            | Key::IdentityRef { cluster, .. }
            | Key::Leader { cluster }
            | Key::Backend { cluster, .. } => Some(cluster),
            Key::Member { name } => Some(name),
        }
    }
}

/// Reads a key; `None` for anything outside the keyspace or malformed.
/// An endpoint a cluster keeps to itself reads as any other endpoint, not
/// exported.
pub fn parse(key: &str) -> Option<Key> {
    if let Some(rest) = key.strip_prefix(LOCAL_PREFIX) {
        return parse_local(rest);
    }
    let rest = key.strip_prefix(PREFIX)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return None;
    }
    Some(match parts.as_slice() {
        ["clusters", name] => Key::Cluster {
            name: (*name).into(),
        },
        ["cluster-ids", id] => Key::ClusterId {
            id: id.parse().ok()?,
        },
        ["nodes", cluster, node] => Key::Node {
            cluster: (*cluster).into(),
            node: (*node).into(),
        },
        ["endpoints", cluster, ip] => Key::Endpoint {
            cluster: (*cluster).into(),
            ip: ip.parse().ok()?,
            exported: true,
        },
        ["identities", cluster, id, node] => Key::ExportedIdentity {
            cluster: (*cluster).into(),
            id: id.parse().ok()?,
            node: (*node).into(),
        },
        // Where agents before local keys kept the masters: read alike.
        ["identities", cluster, id] => Key::Identity {
            cluster: (*cluster).into(),
            id: id.parse().ok()?,
        },
        ["members", name] => Key::Member {
            name: (*name).into(),
        },
        ["leaders", cluster] => Key::Leader {
            cluster: (*cluster).into(),
        },
        ["backends", cluster, namespace, service, port_id, address] => {
            let (ip, port) = address.split_once(':')?;
            Key::Backend {
                namespace: (*namespace).into(),
                service: (*service).into(),
                cluster: (*cluster).into(),
                port_id: (*port_id).into(),
                ip: ip.parse().ok()?,
                port: port.parse().ok()?,
            }
        }
        _ => return None,
    })
}

fn parse_local(rest: &str) -> Option<Key> {
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return None;
    }
    Some(match parts.as_slice() {
        [cluster, "endpoints", ip] => Key::Endpoint {
            cluster: (*cluster).into(),
            ip: ip.parse().ok()?,
            exported: false,
        },
        [cluster, "identities", id] => Key::Identity {
            cluster: (*cluster).into(),
            id: id.parse().ok()?,
        },
        [cluster, "identity-index", hash] => Key::IdentityIndex {
            cluster: (*cluster).into(),
            hash: (*hash).into(),
        },
        [cluster, "identity-refs", id, node] => Key::IdentityRef {
            cluster: (*cluster).into(),
            id: id.parse().ok()?,
            node: (*node).into(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_kind_parses_back() {
        let ip = Ipv4Addr::new(10, 1, 1, 11);
        let cases = [
            (cluster("c1"), Key::Cluster { name: "c1".into() }),
            (cluster_id(7), Key::ClusterId { id: 7 }),
            (
                node("c1", "n1"),
                Key::Node {
                    cluster: "c1".into(),
                    node: "n1".into(),
                },
            ),
            (
                endpoint("c1", ip),
                Key::Endpoint {
                    cluster: "c1".into(),
                    ip,
                    exported: true,
                },
            ),
            (
                identity("c1", 65792),
                Key::Identity {
                    cluster: "c1".into(),
                    id: 65792,
                },
            ),
            (
                exported_identity("c1", 65792, "n1"),
                Key::ExportedIdentity {
                    cluster: "c1".into(),
                    id: 65792,
                    node: "n1".into(),
                },
            ),
            (
                "/fleetnet/v1/identities/c1/65792".into(),
                Key::Identity {
                    cluster: "c1".into(),
                    id: 65792,
                },
            ),
            (
                identity_index("c1", "ab12"),
                Key::IdentityIndex {
                    cluster: "c1".into(),
                    hash: "ab12".into(),
                },
            ),
            (
                identity_ref("c1", 65792, "n1"),
                Key::IdentityRef {
                    cluster: "c1".into(),
                    id: 65792,
                    node: "n1".into(),
                },
            ),
            (
                leader("c1"),
                Key::Leader {
                    cluster: "c1".into(),
                },
            ),
            (
                backend("shop", "web", "c1", "http.tcp", ip, 8080),
                Key::Backend {
                    namespace: "shop".into(),
                    service: "web".into(),
                    cluster: "c1".into(),
                    port_id: "http.tcp".into(),
                    ip,
                    port: 8080,
                },
            ),
            (member("c1"), Key::Member { name: "c1".into() }),
            (
                local_endpoint("c1", ip),
                Key::Endpoint {
                    cluster: "c1".into(),
                    ip,
                    exported: false,
                },
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(parse(&key), Some(expected), "{key}");
        }
    }

    #[test]
    fn foreign_and_malformed_keys_are_not_keys() {
        for key in [
            "/other/v1/clusters/c1",
            "/fleetnet/v1/clusters/",
            "/fleetnet/v1/clusters/c1/extra",
            "/fleetnet/v1/endpoints/c1/not-an-ip",
            "/fleetnet/v1/cluster-ids/70000",
            "/fleetnet/v1/nodes//n1",
            "/fleetnet/v2/nodes/c1/n1",
            "/fleetnet/v1/member-ids/3",
            "/fleetnet/local/v1/c1/endpoints",
            "/fleetnet/local/v1/c1/nodes/n1",
            "/fleetnet/local/v1//endpoints/10.1.1.11",
        ] {
            assert_eq!(parse(key), None, "{key}");
        }
    }
}
