//! etcd roles over the keyspace: what each cluster's agents and the fleet
//! controller may read and write. Every key names its cluster right after
//! its kind, so one role per cluster grants it exactly its own keys by
//! prefix.

use crate::{
    fleet_keys,
    keys::{
        PREFIX, backends_of, cluster, cluster_id, endpoints_of, exported_identities_of, leader,
        local_of,
    },
};

/// What an etcd role is granted on: one key, or every key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub prefix: bool,
    /// Read and write; otherwise read only.
    pub write: bool,
}

impl Grant {
    fn read(key: String, prefix: bool) -> Self {
        Self {
            key,
            prefix,
            write: false,
        }
    }

    fn write(key: String, prefix: bool) -> Self {
        Self {
            key,
            prefix,
            write: true,
        }
    }

    /// True when this grant covers `key`.
    pub fn covers(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(&self.key)
        } else {
            key == self.key
        }
    }

    /// The etcdctl command that grants it to `role`.
    pub fn etcdctl(&self, role: &str) -> String {
        format!(
            "etcdctl role grant-permission {role} {}{} {}",
            if self.write { "readwrite" } else { "read" },
            if self.prefix { " --prefix" } else { "" },
            self.key
        )
    }
}

/// What the agents of cluster `name` (id `id`) need in etcd, and no more:
/// read the whole mesh, write only the keys that name their cluster (its
/// record and id claim, its nodes, endpoints, identities, leader key and
/// backends), read and write their cluster's local keys (what it does not
/// export, identity index and references: no other cluster reads them), read their cluster's fleet target and the
/// revisions, and write their own fleet reports. With one role like this
/// per cluster, a cluster's credentials cannot overwrite or delete another
/// cluster's keys: etcd refuses with "permission denied". (What a cluster
/// may claim inside its own keys, e.g. another cluster's pod addresses, is
/// checked by every agent that reads them.)
pub fn cluster_role(name: &str, id: u16) -> Vec<Grant> {
    vec![
        Grant::read(PREFIX.into(), true),
        Grant::write(cluster(name), false),
        Grant::write(cluster_id(id), false),
        Grant::write(format!("{PREFIX}nodes/{name}/"), true),
        Grant::write(endpoints_of(name), true),
        Grant::write(exported_identities_of(name), true),
        Grant::write(local_of(name), true),
        Grant::write(leader(name), false),
        Grant::write(backends_of(name), true),
        Grant::read(fleet_keys::target(name), false),
        Grant::read(fleet_keys::revisions(), true),
        Grant::write(fleet_keys::reports_of(name), true),
    ]
}

/// The etcd user (and role) of a cluster joined with `fleetnet cluster
/// join`: the name and how many times a cluster of that name has joined.
/// Retiring deletes the user, and a later join of the same name makes a
/// new one, so a certificate issued to the retired cluster (whose common
/// name is its user) never authenticates again.
pub fn member_user(name: &str, generation: u32) -> String {
    format!("fleetnet-{name}-g{generation}")
}

/// What the fleet controller (and the `fleetnet fleet`/`rollout`
/// commands) need: everything under the fleet prefix, and reading the
/// mesh's clusters and nodes.
pub fn controller_role() -> Vec<Grant> {
    vec![
        Grant::write(fleet_keys::PREFIX.into(), true),
        Grant::read(PREFIX.into(), true),
    ]
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::keys::{
        Key, backend, endpoint, exported_identity, identity, identity_index, identity_ref,
        local_endpoint, member, member_id, node, parse,
    };

    /// Every key a cluster writes is inside its own role's write grants,
    /// and inside no other cluster's, even one whose name it prefixes.
    #[test]
    fn a_cluster_role_covers_its_own_keys_and_no_other_clusters() {
        let ip = Ipv4Addr::new(10, 1, 1, 11);
        let written = |name: &str, id: u16| {
            vec![
                cluster(name),
                cluster_id(id),
                node(name, "n1"),
                endpoint(name, ip),
                identity(name, 65792),
                exported_identity(name, 65792, "n1"),
                identity_index(name, "ab12"),
                identity_ref(name, 65792, "n1"),
                leader(name),
                backend("shop", "web", name, "http.tcp", ip, 8080),
                fleet_keys::report(name, "n1"),
                local_endpoint(name, ip),
            ]
        };
        let writes = |grants: &[Grant], key: &str| {
            grants.iter().any(|grant| grant.write && grant.covers(key))
        };
        let (c1, c10, c2) = (
            cluster_role("c1", 1),
            cluster_role("c10", 10),
            cluster_role("c2", 2),
        );
        for key in written("c1", 1) {
            assert!(writes(&c1, &key), "c1 cannot write its own {key}");
            assert!(!writes(&c10, &key), "c10 can write c1's {key}");
            assert!(!writes(&c2, &key), "c2 can write c1's {key}");
        }
        // Every kind of key is in the list above (a new kind fails to
        // compile here until it is added there and to the role).
        let kind = |key: &Key| match key {
            Key::Cluster { .. } => 0,
            Key::ClusterId { .. } => 1,
            Key::Node { .. } => 2,
            Key::Endpoint { .. } => 3,
            Key::Identity { .. } => 4,
            Key::IdentityIndex { .. } => 5,
            Key::IdentityRef { .. } => 6,
            Key::Leader { .. } => 7,
            Key::Backend { .. } => 8,
            // Written by the fleet's admin, never by a cluster.
            Key::Member { .. } => 9,
            Key::ExportedIdentity { .. } => 10,
        };
        let kinds: std::collections::BTreeSet<i32> = written("c1", 1)
            .iter()
            .filter_map(|key| parse(key))
            .map(|key| kind(&key))
            .collect();
        assert_eq!(kinds, (0..11).filter(|kind| *kind != 9).collect());
        // Reading: the whole mesh, its own target and every revision.
        let reads = |key: &str| c1.iter().any(|grant| grant.covers(key));
        assert!(reads(&node("c2", "n1")));
        assert!(reads(&fleet_keys::target("c1")));
        assert!(reads(&fleet_keys::revision(3)));
        assert!(!reads(&fleet_keys::target("c2")));
        assert!(!reads(&fleet_keys::report("c2", "n1")));
        // What another cluster keeps to itself is not even readable.
        assert!(reads(&local_endpoint("c1", ip)));
        assert!(!reads(&local_endpoint("c2", ip)));
        assert!(!reads(&identity_ref("c2", 131328, "n1")));
        // Membership is the admin's: read, never written, by a cluster.
        assert!(reads(&member("c1")));
        for grants in [&c1, &c10, &c2] {
            assert!(!writes(grants, &member("c1")));
            assert!(!writes(grants, &member_id(1)));
        }
    }

    /// The recipe in docs/operations.md is what [`cluster_role`] grants.
    #[test]
    fn the_documented_role_recipe_is_the_one_granted() {
        let docs = fleetnet_doc_check::doc("docs/operations.md");
        let grants = cluster_role("c1", 1)
            .into_iter()
            .map(|grant| grant.etcdctl("fleetnet-c1"))
            .chain(
                controller_role()
                    .into_iter()
                    .map(|grant| grant.etcdctl("fleetnet-controller")),
            );
        for command in grants {
            assert!(
                docs.contains(&command),
                "docs/operations.md lacks `{command}`"
            );
        }
    }
}
