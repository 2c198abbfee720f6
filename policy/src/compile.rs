//! From policies and identities to policy map entries, per policy group
//! of this node's pods ([`crate::groups`]).
//!
//! An endpoint selected by at least one policy covering a direction is
//! enforced in that direction: only what some rule of those policies allows
//! passes. Each rule becomes entries (peer identity or "any", protocol,
//! port prefix); entries another entry already covers are left out.

use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::{Direction, EndpointInfo, PolicyKey};

use crate::identity::{CLUSTER_LABEL, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use crate::{
    cidr::CidrIdentities,
    groups::{GroupKey, PolicyGroups},
    ports::{self, IdentityPorts, NamedPorts},
    rules::{Namespaces, Peer, Policy, Port, Rule},
    selector::Labels,
};

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// An identity's labels as selectors see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLabels {
    pub namespace: String,
    /// The pod's labels and the cluster label.
    pub pod: Labels,
    /// Its namespace's labels, and the namespace name label.
    pub namespace_labels: Labels,
    /// A pod its cluster does not export: of its labels only the cluster
    /// label is known, so only peers that name no more than the cluster
    /// (any namespace, any pod of it) select it.
    pub unexported: bool,
}

impl PeerLabels {
    /// Splits an identity's label set. `cluster` is the cluster that owns
    /// the identity: it overrides whatever cluster label the set claims.
    pub fn from_identity(labels: &Labels, cluster: &str) -> Self {
        let namespace = labels.get(NAMESPACE_LABEL).cloned().unwrap_or_default();
        let mut pod = Labels::new();
        let mut namespace_labels = Labels::new();
        for (key, value) in labels {
            match key.strip_prefix(NAMESPACE_LABELS_PREFIX) {
                Some(key) => {
                    namespace_labels.insert(key.to_string(), value.clone());
                }
                None => {
                    pod.insert(key.clone(), value.clone());
                }
            }
        }
        pod.insert(CLUSTER_LABEL.into(), cluster.into());
        namespace_labels.insert(NAMESPACE_NAME_LABEL.into(), namespace.clone());
        Self {
            namespace,
            pod,
            namespace_labels,
            unexported: false,
        }
    }

    /// Any pod of `cluster` that it does not export
    /// (`dataplane_common::identity::cluster_pods`).
    pub fn unexported_pod_of(cluster: &str) -> Self {
        Self {
            namespace: String::new(),
            pod: Labels::from([(CLUSTER_LABEL.to_string(), cluster.to_string())]),
            namespace_labels: Labels::new(),
            unexported: true,
        }
    }
}

/// Everything peers are chosen from.
#[derive(Debug, Default)]
pub struct Universe {
    /// Every known identity of every accepted cluster.
    pub identities: BTreeMap<u32, PeerLabels>,
    /// Named ports of the pods of each identity.
    pub named_ports: BTreeMap<u32, IdentityPorts>,
    pub cidrs: CidrIdentities,
}

/// A pod of this node that policies may apply to: the subject of the
/// policies selecting it.
#[derive(Debug, Clone)]
pub struct Subject {
    pub labels: PeerLabels,
    pub named_ports: NamedPorts,
    /// Its policy group in the endpoints map now, if any: a new group
    /// takes it when free (see [`PolicyGroups::sync`]).
    pub policy_id: Option<u16>,
}

/// An endpoint's place in the policy map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assignment {
    /// [`EndpointInfo::INGRESS_ENFORCED`] and [`EndpointInfo::EGRESS_ENFORCED`].
    pub flags: u16,
    /// Its policy group (0: none, no entries).
    pub policy_id: u16,
}

#[derive(Debug, Default)]
pub struct Compiled {
    /// One per endpoint, in the order given.
    pub assignments: Vec<Assignment>,
    /// Every group's entries: (key, prefix bits).
    pub entries: BTreeSet<(PolicyKey, u32)>,
}

/// The enforcement flags of a pod with these labels.
pub fn enforcement<'a>(policies: impl IntoIterator<Item = &'a Policy>, pod: &PeerLabels) -> u16 {
    let mut flags = 0;
    for policy in policies {
        if selects(policy, pod) {
            if policy.ingress.is_some() {
                flags |= EndpointInfo::INGRESS_ENFORCED;
            }
            if policy.egress.is_some() {
                flags |= EndpointInfo::EGRESS_ENFORCED;
            }
        }
    }
    flags
}

fn selects(policy: &Policy, pod: &PeerLabels) -> bool {
    policy.namespace == pod.namespace && policy.selector.matches(&pod.pod)
}

/// Peers of a rule as identities; `None` is every peer.
type PeerSet = Option<BTreeSet<u32>>;

/// Compiles `policies` for `endpoints`: their groups (ids from `groups`)
/// and the groups' entries.
pub fn compile(
    policies: &[&Policy],
    endpoints: &[Subject],
    universe: &Universe,
    groups: &mut PolicyGroups,
) -> Compiled {
    // Each endpoint's group: the policies selecting it, per direction.
    let keys: Vec<Option<GroupKey>> = endpoints
        .iter()
        .map(|endpoint| {
            let names = |ingress: bool| -> Vec<(String, String)> {
                policies
                    .iter()
                    .filter(|p| p.rules(ingress).is_some() && selects(p, &endpoint.labels))
                    .map(|p| (p.namespace.clone(), p.name.clone()))
                    .collect()
            };
            let (ingress, egress) = (names(true), names(false));
            (!ingress.is_empty() || !egress.is_empty()).then(|| GroupKey {
                ingress,
                egress,
                named_ports: endpoint.named_ports.clone(),
            })
        })
        .collect();
    let mut wanted = BTreeMap::new();
    for (key, endpoint) in keys.iter().zip(endpoints) {
        if let Some(key) = key {
            let hint = wanted.entry(key.clone()).or_insert(None);
            *hint = hint.or(endpoint.policy_id);
        }
    }
    let ids = groups.sync(&wanted);

    let by_name: BTreeMap<(&str, &str), &Policy> = policies
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), *p))
        .collect();
    let mut peer_sets: BTreeMap<(&str, &str, bool, usize), PeerSet> = BTreeMap::new();
    let mut entries = BTreeSet::new();
    for (key, id) in &ids {
        let Some(policy_id) = *id else {
            continue;
        };
        let mut group = BTreeSet::new();
        for (ingress, names) in [(true, &key.ingress), (false, &key.egress)] {
            let scope = Scope {
                policy_id,
                direction: if ingress {
                    Direction::Ingress
                } else {
                    Direction::Egress
                },
                named_ports: &key.named_ports,
                universe,
            };
            for (namespace, name) in names {
                let policy = by_name[&(namespace.as_str(), name.as_str())];
                for (index, rule) in policy.rules(ingress).into_iter().flatten().enumerate() {
                    let peers = peer_sets
                        .entry((namespace, name, ingress, index))
                        .or_insert_with(|| peer_set(rule, universe));
                    scope.entries(rule, peers, &mut group);
                }
            }
        }
        entries.extend(minimal(group));
    }

    let assignments = keys
        .iter()
        .map(|key| match key {
            Some(key) => Assignment {
                flags: flags_of(key),
                policy_id: ids[key].unwrap_or(0),
            },
            None => Assignment::default(),
        })
        .collect();
    Compiled {
        assignments,
        entries,
    }
}

fn flags_of(key: &GroupKey) -> u16 {
    let mut flags = 0;
    if !key.ingress.is_empty() {
        flags |= EndpointInfo::INGRESS_ENFORCED;
    }
    if !key.egress.is_empty() {
        flags |= EndpointInfo::EGRESS_ENFORCED;
    }
    flags
}

fn peer_set(rule: &Rule, universe: &Universe) -> PeerSet {
    let peers = rule.peers.as_ref()?;
    let mut ids = BTreeSet::new();
    for peer in peers {
        match peer {
            Peer::Pods { namespaces, pods } => {
                ids.extend(
                    universe
                        .identities
                        .iter()
                        .filter(|(_, labels)| {
                            if labels.unexported {
                                let any_namespace = matches!(
                                    namespaces,
                                    Namespaces::Selected(selector) if selector.is_empty()
                                );
                                return any_namespace
                                    && pods.only_mentions(CLUSTER_LABEL)
                                    && pods.matches(&labels.pod);
                            }
                            let namespace = match namespaces {
                                Namespaces::Named(name) => labels.namespace == *name,
                                Namespaces::Selected(selector) => {
                                    selector.matches(&labels.namespace_labels)
                                }
                            };
                            namespace && pods.matches(&labels.pod)
                        })
                        .map(|(id, _)| *id),
                );
            }
            Peer::Block { cidr, except } => ids.extend(universe.cidrs.selected_by(cidr, except)),
        }
    }
    Some(ids)
}

/// Where a group's entries for one direction go.
struct Scope<'a> {
    policy_id: u16,
    direction: Direction,
    /// The group's own named ports (for ingress rules).
    named_ports: &'a NamedPorts,
    universe: &'a Universe,
}

impl Scope<'_> {
    fn key(&self, identity: u32, protocol: u8, port: u16) -> PolicyKey {
        PolicyKey {
            policy_id: self.policy_id,
            direction: self.direction as u8,
            identity: identity.to_be_bytes(),
            protocol,
            port: port.to_be_bytes(),
            ..PolicyKey::default()
        }
    }

    fn entries(&self, rule: &Rule, peers: &PeerSet, out: &mut BTreeSet<(PolicyKey, u32)>) {
        let identities: Vec<u32> = match peers {
            Some(ids) => ids.iter().copied().collect(),
            None => vec![PolicyKey::ANY_IDENTITY],
        };
        let Some(ports) = &rule.ports else {
            for id in &identities {
                out.insert((self.key(*id, 0, 0), PolicyKey::FIXED_BITS));
            }
            return;
        };
        for port in ports {
            let protocol = port.protocol;
            match &port.port {
                Port::Any => {
                    for id in &identities {
                        out.insert((self.key(*id, protocol, 0), PolicyKey::PROTOCOL_BITS));
                    }
                }
                Port::Range(first, last) => {
                    for (value, bits) in ports::prefixes(*first, *last) {
                        for id in &identities {
                            out.insert((
                                self.key(*id, protocol, value),
                                PolicyKey::PROTOCOL_BITS + bits,
                            ));
                        }
                    }
                }
                // Ingress: the name is one of this pod's ports.
                Port::Named(name) if self.direction == Direction::Ingress => {
                    if let Some((p, number)) = self.named_ports.get(name)
                        && *p == protocol
                    {
                        for id in &identities {
                            out.insert((self.key(*id, protocol, *number), PolicyKey::FULL_BITS));
                        }
                    }
                }
                // Egress: the name is a port of the peer's pods.
                Port::Named(name) => {
                    let named = &self.universe.named_ports;
                    let with_ports: Box<dyn Iterator<Item = (u32, &IdentityPorts)>> = match peers {
                        Some(ids) => Box::new(
                            ids.iter()
                                .filter_map(|id| named.get(id).map(|ports| (*id, ports))),
                        ),
                        None => Box::new(named.iter().map(|(id, ports)| (*id, ports))),
                    };
                    for (id, ports) in with_ports {
                        for (p, number) in ports.get(name).into_iter().flatten() {
                            if *p == protocol {
                                out.insert((self.key(id, protocol, *number), PolicyKey::FULL_BITS));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Drops entries another entry covers: one for the same or any identity
/// whose (protocol, port) prefix contains theirs.
fn minimal(entries: BTreeSet<(PolicyKey, u32)>) -> BTreeSet<(PolicyKey, u32)> {
    let group = |key: &PolicyKey| (key.policy_id, key.direction, key.identity);
    let mut groups: BTreeMap<_, Vec<(PolicyKey, u32)>> = BTreeMap::new();
    for entry in &entries {
        groups.entry(group(&entry.0)).or_default().push(*entry);
    }
    let covers = |wide: &(PolicyKey, u32), narrow: &(PolicyKey, u32)| {
        if wide == narrow || wide.1 > narrow.1 {
            return false;
        }
        let tail = |k: &PolicyKey| u32::from_be_bytes([k.protocol, k._pad2, k.port[0], k.port[1]]);
        let bits = wide.1 - PolicyKey::FIXED_BITS;
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        tail(&wide.0) & mask == tail(&narrow.0) & mask
    };
    let any = PolicyKey::ANY_IDENTITY.to_be_bytes();
    entries
        .iter()
        .filter(|narrow| {
            let (endpoint, direction, identity) = group(&narrow.0);
            let same = groups.get(&(endpoint, direction, identity));
            let wildcard = (identity != any)
                .then(|| groups.get(&(endpoint, direction, any)))
                .flatten();
            !same
                .into_iter()
                .chain(wildcard)
                .flatten()
                .any(|wide| covers(wide, narrow))
        })
        .copied()
        .collect()
}
