//! Other clusters' exported identities: each node of a cluster that runs
//! an exported pod publishes the pod's identity under its own lease, and
//! the identity is kept, once, while any of those nodes still does. An
//! agent thus holds the identities it can meet, not every label set of
//! the fleet.

use std::collections::{BTreeMap, BTreeSet};

use fleetnet_store::records::IdentityRecord;

#[derive(Debug, Default)]
pub(super) struct ExportedIdentities {
    by_id: BTreeMap<u32, Exported>,
}

#[derive(Debug)]
struct Exported {
    cluster: String,
    record: IdentityRecord,
    /// The nodes publishing it.
    nodes: BTreeSet<String>,
}

impl ExportedIdentities {
    /// `node` of `cluster` exports identity `id` as `record`, or no longer
    /// does (`None`); true when what the identity means changed: it came,
    /// went, or its labels changed.
    pub(super) fn set(
        &mut self,
        cluster: &str,
        id: u32,
        node: &str,
        record: Option<IdentityRecord>,
    ) -> bool {
        let known = self
            .by_id
            .get_mut(&id)
            .filter(|known| known.cluster == cluster);
        match (record, known) {
            (Some(record), Some(known)) => {
                known.nodes.insert(node.to_string());
                let changed = known.record != record;
                known.record = record;
                changed
            }
            (Some(record), None) => {
                let exported = Exported {
                    cluster: cluster.to_string(),
                    record,
                    nodes: BTreeSet::from([node.to_string()]),
                };
                self.by_id.insert(id, exported);
                true
            }
            (None, Some(known)) => {
                known.nodes.remove(node);
                let gone = known.nodes.is_empty();
                if gone {
                    self.by_id.remove(&id);
                }
                gone
            }
            (None, None) => false,
        }
    }

    pub(super) fn get(&self, id: u32) -> Option<(&str, &IdentityRecord)> {
        self.by_id
            .get(&id)
            .map(|known| (known.cluster.as_str(), &known.record))
    }

    /// (id, cluster, labels) of every exported identity.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &str, &IdentityRecord)> {
        self.by_id
            .iter()
            .map(|(id, known)| (*id, known.cluster.as_str(), &known.record))
    }

    pub(super) fn clear(&mut self) {
        self.by_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(app: &str) -> Option<IdentityRecord> {
        Some(IdentityRecord {
            v: 1,
            labels: [("app".to_string(), app.to_string())].into(),
        })
    }

    #[test]
    fn an_identity_stays_while_any_node_exports_it() {
        let mut exported = ExportedIdentities::default();
        assert!(exported.set("c2", 7, "n1", labels("web")));
        assert!(!exported.set("c2", 7, "n2", labels("web")), "no news");
        assert!(!exported.set("c2", 7, "n1", None), "n2 still exports it");
        assert_eq!(exported.get(7).map(|(c, _)| c), Some("c2"));
        assert!(exported.set("c2", 7, "n2", labels("api")), "new labels");
        assert!(!exported.set("c3", 7, "n2", None), "not c3's");
        assert!(exported.set("c2", 7, "n2", None), "gone");
        assert!(exported.get(7).is_none());
        assert_eq!(exported.iter().count(), 0);
    }
}
