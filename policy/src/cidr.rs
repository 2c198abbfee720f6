//! Node-local identities for the prefixes ipBlock peers name. Each prefix
//! gets its own identity in the ipcache, below every pod and node entry,
//! so an address resolves to its most specific ipBlock prefix unless it
//! belongs to the mesh (as in Cilium, ipBlock selects what is not a pod).
//! An ipBlock then matches the identities of prefixes inside its cidr and
//! not inside one of its excepts.
//!
//! These identities use cluster 0's range from [`FIRST_INDEX`] up, which no
//! cluster can publish.

use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::{IpcacheEntry, identity};
use ipnet::Ipv4Net;

use crate::identity::FIRST_INDEX;

#[derive(Debug, Default)]
pub struct CidrIdentities {
    ids: BTreeMap<Ipv4Net, u32>,
}

impl CidrIdentities {
    /// Gives each of `wanted` an identity (keeping the ones it had) and
    /// forgets the rest. Prefixes beyond the last free identity get none,
    /// so nothing selects them; the count of those is returned.
    pub fn sync(&mut self, wanted: &BTreeSet<Ipv4Net>) -> usize {
        self.ids.retain(|cidr, _| wanted.contains(cidr));
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let mut free = (FIRST_INDEX..=u16::MAX)
            .map(|index| identity::make(0, index))
            .filter(|id| !used.contains(id));
        let mut missing = 0;
        for cidr in wanted {
            if self.ids.contains_key(cidr) {
                continue;
            }
            match free.next() {
                Some(id) => {
                    self.ids.insert(*cidr, id);
                }
                None => missing += 1,
            }
        }
        missing
    }

    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Net, u32)> + '_ {
        self.ids.iter().map(|(cidr, id)| (*cidr, *id))
    }

    /// The ipcache entries: not in any cluster, not tunnelled.
    pub fn ipcache(&self) -> BTreeMap<Ipv4Net, IpcacheEntry> {
        self.iter()
            .map(|(cidr, identity)| {
                let entry = IpcacheEntry {
                    identity,
                    tunnel_endpoint: [0; 4],
                    cluster_id: 0,
                    flags: 0,
                };
                (cidr, entry)
            })
            .collect()
    }

    /// Identities of the prefixes an ipBlock of `cidr` minus `except`
    /// selects.
    pub fn selected_by<'a>(
        &'a self,
        cidr: &'a Ipv4Net,
        except: &'a [Ipv4Net],
    ) -> impl Iterator<Item = u32> + 'a {
        self.iter()
            .filter(move |(prefix, _)| {
                cidr.contains(prefix) && !except.iter().any(|e| e.contains(prefix))
            })
            .map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn identities_are_stable_and_reused_and_except_carves_out() {
        let mut cidrs = CidrIdentities::default();
        let wanted = BTreeSet::from([net("10.0.0.0/8"), net("10.9.0.0/16"), net("0.0.0.0/0")]);
        assert_eq!(cidrs.sync(&wanted), 0);
        let before: BTreeMap<Ipv4Net, u32> = cidrs.iter().collect();
        assert!(
            before
                .values()
                .all(|id| identity::cluster_of(*id) == 0 && *id >= 256)
        );

        let wanted = BTreeSet::from([net("10.0.0.0/8"), net("10.9.0.0/16"), net("192.0.2.0/24")]);
        cidrs.sync(&wanted);
        let after: BTreeMap<Ipv4Net, u32> = cidrs.iter().collect();
        assert_eq!(after[&net("10.0.0.0/8")], before[&net("10.0.0.0/8")]);
        assert_eq!(after[&net("10.9.0.0/16")], before[&net("10.9.0.0/16")]);
        assert_eq!(
            after[&net("192.0.2.0/24")],
            before[&net("0.0.0.0/0")],
            "a freed identity is reused"
        );

        let ten = net("10.0.0.0/8");
        let selected: Vec<u32> = cidrs.selected_by(&ten, &[net("10.9.0.0/16")]).collect();
        assert_eq!(selected, [after[&ten]]);
        let selected: BTreeSet<u32> = cidrs.selected_by(&ten, &[]).collect();
        assert_eq!(selected.len(), 2, "the /16 inside is selected too");
    }
}
