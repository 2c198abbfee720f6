//! Finding the agents: every node the mesh knows, by the keys its agents
//! publish (`/fleetnet/v1/nodes/<cluster>/<node>`, with its underlay
//! address), so the relay sees what every agent sees, and a node whose
//! lease ended is gone from it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use etcd_client::Client;
use fleetnet_store::{
    EtcdError, keys,
    records::{NodeRecord, Record},
};

/// One node's agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgentRef {
    pub cluster: String,
    pub node: String,
    pub ip: Ipv4Addr,
}

/// The fleet's agents by cluster, each cluster's in node order. Records
/// that do not read are left out (an agent of a newer version; its
/// cluster's other nodes still show).
pub async fn agents(client: &mut Client) -> Result<BTreeMap<String, Vec<AgentRef>>, EtcdError> {
    let (nodes, _) = fleetnet_store::list(client, &format!("{}nodes/", keys::PREFIX)).await?;
    let mut clusters: BTreeMap<String, Vec<AgentRef>> = BTreeMap::new();
    for stored in nodes {
        let (Some(keys::Key::Node { cluster, node }), Ok(record)) =
            (keys::parse(&stored.key), NodeRecord::decode(&stored.value))
        else {
            continue;
        };
        clusters.entry(cluster.clone()).or_default().push(AgentRef {
            cluster,
            node,
            ip: record.ip,
        });
    }
    Ok(clusters)
}
