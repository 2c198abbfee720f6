//! What this node publishes under its lease: its node record, one record
//! per local pod that has an identity (in the shared keyspace when its
//! namespace is exported, among the cluster's local keys otherwise), one
//! reference per identity it uses, and the labels of the identities of
//! exported pods, for other clusters. Each change is one small write of
//! one key.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use etcd_client::Client;

use fleetnet_store::{
    keys,
    records::{EndpointRecord, IdentityRecord, NodeRecord, Record, VERSION},
};

use crate::{
    mesh::session::Session,
    source::state::{NodeInfo, NodePod},
};

/// Every key this node should hold, with its value.
pub fn own_keys(
    cluster: &str,
    node: &str,
    node_info: Option<&NodeInfo>,
    pods: &BTreeMap<Ipv4Addr, NodePod>,
    identity_of: impl Fn(&NodePod) -> Option<u32>,
) -> BTreeMap<String, Vec<u8>> {
    let mut keys = BTreeMap::new();
    if let Some(info) = node_info {
        let record = NodeRecord {
            v: VERSION,
            ip: info.ip,
            pod_cidrs: info.pod_cidrs.clone(),
        };
        keys.insert(keys::node(cluster, node), record.encode());
    }
    for (ip, pod) in pods {
        let Some(identity) = identity_of(pod) else {
            continue;
        };
        let record = EndpointRecord {
            v: VERSION,
            identity,
            node: node.into(),
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            ports: pod.named_ports.clone(),
        };
        let key = if pod.exported {
            keys::endpoint(cluster, *ip)
        } else {
            keys::local_endpoint(cluster, *ip)
        };
        keys.insert(key, record.encode());
        keys.insert(keys::identity_ref(cluster, identity, node), Vec::new());
        if pod.exported {
            let labels = IdentityRecord {
                v: VERSION,
                labels: pod.identity_labels.clone(),
            };
            let key = keys::exported_identity(cluster, identity, node);
            keys.insert(key, labels.encode());
        }
    }
    keys
}

/// Starts the session with the first complete set of keys, then sends it
/// only what changes.
#[derive(Default)]
pub struct Publisher {
    session: Option<Session>,
    published: BTreeMap<String, Vec<u8>>,
}

impl Publisher {
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Holds exactly `desired` in etcd from now on; true when this started
    /// the session.
    pub fn publish(
        &mut self,
        desired: BTreeMap<String, Vec<u8>>,
        client: &Client,
        cluster: &str,
        node: &str,
        ttl: Duration,
    ) -> bool {
        let Some(session) = &self.session else {
            let session = Session::start(client.clone(), cluster, node, ttl, desired.clone());
            session.campaign();
            self.session = Some(session);
            self.published = desired;
            return true;
        };
        for key in self
            .published
            .keys()
            .filter(|key| !desired.contains_key(*key))
        {
            session.delete(key.clone());
        }
        for (key, value) in &desired {
            if self.published.get(key) != Some(value) {
                session.put(key.clone(), value.clone());
            }
        }
        self.published = desired;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pods_with_an_identity_are_published_with_one_ref_per_identity() {
        // b's namespace is not exported: only its cluster reads its key.
        let pod = |name: &str, app: &str| NodePod {
            namespace: "default".into(),
            name: name.into(),
            ip: Ipv4Addr::UNSPECIFIED,
            identity_labels: [("app".to_string(), app.to_string())].into(),
            named_ports: Default::default(),
            exported: name != "b",
        };
        let pods: BTreeMap<Ipv4Addr, NodePod> = [
            (Ipv4Addr::new(10, 1, 1, 11), pod("a", "web")),
            (Ipv4Addr::new(10, 1, 1, 12), pod("b", "web")),
            (Ipv4Addr::new(10, 1, 1, 13), pod("c", "new")),
        ]
        .into();
        let node = NodeInfo {
            ip: Ipv4Addr::new(198, 18, 1, 11),
            pod_cidrs: vec!["10.1.1.0/24".parse().unwrap()],
        };
        let keys = own_keys("c1", "n1", Some(&node), &pods, |pod| {
            (pod.identity_labels["app"] == "web").then_some(65792)
        });
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "/fleetnet/local/v1/c1/endpoints/10.1.1.12",
                "/fleetnet/local/v1/c1/identity-refs/65792/n1",
                "/fleetnet/v1/endpoints/c1/10.1.1.11",
                "/fleetnet/v1/identities/c1/65792/n1",
                "/fleetnet/v1/nodes/c1/n1",
            ]
        );
        let record =
            EndpointRecord::decode(&keys["/fleetnet/local/v1/c1/endpoints/10.1.1.12"]).unwrap();
        assert_eq!((record.identity, record.pod.as_str()), (65792, "b"));
    }
}
