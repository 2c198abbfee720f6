//! Policy groups: endpoints whose entries are the same share them. Two
//! endpoints have the same entries when the same policies select them in
//! each direction and they name the same ports (ingress rules may name a
//! port of the endpoint itself). Pods of one workload form one group, so
//! the policy map grows with workloads, not with pods.
//!
//! A group keeps its id while it exists, so a change of peers rewrites only
//! the entries that change; ids go round before one is reused.

use std::collections::{BTreeMap, BTreeSet};

use crate::ports::NamedPorts;

/// What decides a group's entries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    /// (namespace, name) of the policies selecting the endpoint for ingress.
    pub ingress: Vec<(String, String)>,
    pub egress: Vec<(String, String)>,
    pub named_ports: NamedPorts,
}

#[derive(Debug)]
pub struct PolicyGroups {
    ids: BTreeMap<GroupKey, u16>,
    /// Where the search for a free id starts.
    next: u16,
}

impl Default for PolicyGroups {
    fn default() -> Self {
        Self {
            ids: BTreeMap::new(),
            next: 1,
        }
    }
}

impl PolicyGroups {
    /// Ids for `wanted` (existing groups keep theirs); forgets the rest.
    /// A new group takes its hint if free: the id its endpoints have in
    /// the map now, so a restarted agent finds its groups where the
    /// previous one left them. A group beyond the 65,535th gets none
    /// (`None`): its endpoints enforce with no entries, which denies.
    pub fn sync(
        &mut self,
        wanted: &BTreeMap<GroupKey, Option<u16>>,
    ) -> BTreeMap<GroupKey, Option<u16>> {
        self.ids.retain(|key, _| wanted.contains_key(key));
        let mut used: BTreeSet<u16> = self.ids.values().copied().collect();
        wanted
            .iter()
            .map(|(key, hint)| {
                let id = match self.ids.get(key) {
                    Some(id) => Some(*id),
                    None => {
                        let free = |id: &u16| *id != 0 && !used.contains(id);
                        let id = hint
                            .filter(free)
                            .or_else(|| (self.next..=u16::MAX).chain(1..self.next).find(free));
                        if let Some(id) = id {
                            used.insert(id);
                            self.ids.insert(key.clone(), id);
                            if hint != &Some(id) {
                                self.next = id.checked_add(1).unwrap_or(1);
                            }
                        }
                        id
                    }
                };
                (key.clone(), id)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(policy: &str) -> GroupKey {
        GroupKey {
            ingress: vec![("shop".into(), policy.into())],
            egress: Vec::new(),
            named_ports: NamedPorts::new(),
        }
    }

    #[test]
    fn ids_are_stable_and_not_reused_at_once() {
        let mut groups = PolicyGroups::default();
        let first = groups.sync(&BTreeMap::from([(key("a"), None), (key("b"), None)]));
        assert_eq!(first[&key("a")], Some(1));
        assert_eq!(first[&key("b")], Some(2));
        let second = groups.sync(&BTreeMap::from([(key("b"), None), (key("c"), None)]));
        assert_eq!(second[&key("b")], Some(2), "an existing group keeps its id");
        assert_eq!(
            second[&key("c")],
            Some(3),
            "1 was just freed: not reused yet"
        );
        assert_eq!(groups.len(), 2);
    }

    #[test]
    fn a_restarted_agent_takes_the_ids_its_endpoints_have() {
        let mut groups = PolicyGroups::default();
        let ids = groups.sync(&BTreeMap::from([
            (key("a"), Some(40)),
            (key("b"), Some(40)),
            (key("c"), Some(0)),
        ]));
        assert_eq!(ids[&key("a")], Some(40));
        assert_ne!(
            ids[&key("b")],
            Some(40),
            "a hint already taken is not shared"
        );
        assert_ne!(ids[&key("c")], Some(0), "0 means no group");
    }
}
