//! Convergence: what every node's ipcache should hold, and waiting until
//! it does.

use std::{collections::BTreeMap, io, time::Duration};

use dataplane_common::IpcacheEntry;

use super::*;

impl FleetInABox {
    /// The ipcache entry every pod should have on `node`'s map: its own
    /// pods local, every other pod behind its node's underlay IP.
    pub fn expected_ipcache(&self, node: &Node) -> BTreeMap<Ipv4Net, ([u8; 4], u16)> {
        self.pods()
            .map(|(host, pod)| {
                let tunnel = if host.id == node.id {
                    [0; 4]
                } else {
                    host.ip.octets()
                };
                (Ipv4Net::from(pod.ip), (tunnel, host.cluster_id))
            })
            .collect()
    }

    /// Pods (by /32) missing or wrong in `node`'s ipcache, and /32 entries
    /// it holds for pods that do not exist.
    pub fn ipcache_mismatches(&self, node: &Node) -> Vec<String> {
        let expected = self.expected_ipcache(node);
        let actual: BTreeMap<Ipv4Net, IpcacheEntry> = node
            .maps()
            .ipcache()
            .unwrap_or_default()
            .into_iter()
            .filter(|(cidr, _)| cidr.prefix_len() == 32)
            .collect();
        let mut problems = Vec::new();
        for (cidr, (tunnel, cluster)) in &expected {
            match actual.get(cidr) {
                Some(entry) if entry.tunnel_endpoint == *tunnel && entry.cluster_id == *cluster => {
                }
                other => problems.push(format!("{}: {cidr} is {other:?}", node.id)),
            }
        }
        for cidr in actual.keys().filter(|cidr| !expected.contains_key(cidr)) {
            problems.push(format!("{}: stale entry {cidr}", node.id));
        }
        problems
    }

    /// Waits until every node's ipcache holds exactly the fleet's pods.
    pub fn wait_converged(&self, timeout: Duration) -> io::Result<Duration> {
        let mut problems = Vec::new();
        let converged = crate::poll(timeout, Duration::from_millis(20), || {
            problems = self
                .nodes
                .iter()
                .flat_map(|node| self.ipcache_mismatches(node))
                .collect();
            problems.is_empty().then_some(())
        });
        match converged {
            Some(((), took)) => Ok(took),
            None => Err(io::Error::other(format!(
                "not converged after {timeout:?}:\n{}",
                problems.join("\n")
            ))),
        }
    }
}
