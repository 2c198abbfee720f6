//! The agent's network policy: this cluster's NetworkPolicies and the
//! fleet revision's, compiled for this node's pods against every cluster's
//! identities into policy groups and their entries, which the policy
//! programmer writes. New entries go in before endpoints move to their
//! groups, unwanted ones come out after, so a change never denies for a
//! moment what stays allowed.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use fleetnet_policy::{
    compile::{self, Assignment, PeerLabels, Subject, Universe},
    groups::PolicyGroups,
    rules::Policy,
    set::PolicySet,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tracing::{debug, warn};

use super::identities::PodIdentities;
use crate::{
    datapath::{
        DatapathMaps,
        programmers::{
            endpoints::EndpointProgrammer, ipcache::IpcacheProgrammer, policy::PolicyProgrammer,
        },
    },
    mesh::state::MeshState,
    metrics::Metrics,
    source::state::NodePod,
};

pub(super) struct PolicyEngine {
    /// This cluster's NetworkPolicies as last read.
    policies: PolicySet,
    /// What policy peers are chosen from (kept for its CIDR identities).
    universe: Universe,
    groups: PolicyGroups,
    /// Each local pod's policy group and enforcement, as last compiled.
    assignments: BTreeMap<Ipv4Addr, Assignment>,
    programmer: PolicyProgrammer,
    /// Policies, pods or peers changed since the last compile.
    dirty: bool,
}

/// What a compile reads besides the policies: the mesh's identities and
/// named ports, this node's pods' identities and current groups, and the
/// fleet revision's policies.
pub(super) struct Peers<'a> {
    pub mesh: &'a MeshState,
    pub identities: &'a PodIdentities,
    pub endpoints: &'a EndpointProgrammer,
    pub fleet: &'a [Policy],
}

impl PolicyEngine {
    /// Starts from the entries the policy map holds now.
    pub(super) fn new(programmer: PolicyProgrammer) -> Self {
        Self {
            policies: PolicySet::default(),
            universe: Universe::default(),
            groups: PolicyGroups::default(),
            assignments: BTreeMap::new(),
            programmer,
            dirty: true,
        }
    }

    /// Something policies depend on changed: compile again.
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub(super) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Reads this cluster's NetworkPolicies; marks a compile due when they
    /// changed.
    pub(super) fn read<'a>(
        &mut self,
        objects: impl Iterator<Item = &'a NetworkPolicy>,
        cluster: &str,
        metrics: &Metrics,
    ) {
        if self.policies.update(objects, cluster) {
            self.dirty = true;
        }
        metrics.policies.set(self.policies.len() as i64);
        metrics.policies_invalid.set(self.policies.invalid() as i64);
    }

    /// NetworkPolicies in force (this cluster's own).
    pub(super) fn count(&self) -> usize {
        self.policies.len()
    }

    /// Entries in the policy map.
    pub(super) fn entries(&self) -> usize {
        self.programmer.entries()
    }

    /// `pod`'s group and enforcement as last compiled; a pod not compiled
    /// yet is enforced with no entries (deny).
    pub(super) fn assignment(&self, pod: &NodePod, cluster: &str, fleet: &[Policy]) -> Assignment {
        self.assignments.get(&pod.ip).copied().unwrap_or_else(|| {
            let labels = PeerLabels::from_identity(&pod.identity_labels, cluster);
            Assignment {
                flags: compile::enforcement(self.policies.policies().chain(fleet), &labels),
                policy_id: 0,
            }
        })
    }

    /// When anything changed: compiles the policies for this node's pods
    /// (their groups, and the groups' entries), gives ipBlock prefixes their
    /// identities in the ipcache, and adds the policy map entries that are
    /// missing. Endpoints move to their groups, and unwanted entries are
    /// removed ([`PolicyEngine::remove_unwanted`]), after this.
    pub(super) fn compile(
        &mut self,
        pods: &BTreeMap<Ipv4Addr, NodePod>,
        cluster: &str,
        peers: Peers<'_>,
        ipcache: &mut IpcacheProgrammer,
        maps: &mut DatapathMaps,
        metrics: &Metrics,
    ) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let started = Instant::now();
        let policies: Vec<&Policy> = self.policies.policies().chain(peers.fleet).collect();
        let universe = &mut self.universe;
        universe.identities.clear();
        universe.named_ports.clear();
        // Without a policy no peer is chosen: the fleet's identities are
        // not held twice for nothing.
        if !policies.is_empty() {
            universe.identities = peers
                .mesh
                .identities()
                .map(|(id, owner, record)| (id, PeerLabels::from_identity(&record.labels, owner)))
                .collect();
            // Every cluster's pods it does not export, by their nodes' CIDRs.
            for (name, cluster_id) in peers.mesh.accepted() {
                universe.identities.insert(
                    dataplane_common::identity::cluster_pods(cluster_id),
                    PeerLabels::unexported_pod_of(name),
                );
            }
            universe.named_ports = peers.mesh.named_ports();
        }
        let mut subjects = Vec::new();
        for pod in pods.values() {
            let labels = PeerLabels::from_identity(&pod.identity_labels, cluster);
            if let Some(identity) = peers.identities.get(&pod.identity_labels) {
                universe
                    .identities
                    .entry(identity)
                    .or_insert_with(|| labels.clone());
                let ports = universe.named_ports.entry(identity).or_default();
                for (name, port) in &pod.named_ports {
                    ports.entry(name.clone()).or_default().insert(*port);
                }
            }
            subjects.push(Subject {
                labels,
                named_ports: pod.named_ports.clone(),
                policy_id: peers.endpoints.policy_id(pod.ip),
            });
        }
        let cidrs = self
            .policies
            .cidrs()
            .into_iter()
            .chain(peers.fleet.iter().flat_map(Policy::cidrs))
            .collect();
        let unassigned = universe.cidrs.sync(&cidrs);
        if unassigned > 0 {
            warn!(
                "{unassigned} ipBlock prefixes got no identity (all are in use); nothing selects them"
            );
        }
        ipcache.set_cidrs(universe.cidrs.ipcache(), maps, metrics);
        let compiled = compile::compile(&policies, &subjects, universe, &mut self.groups);
        self.assignments = pods.keys().copied().zip(compiled.assignments).collect();
        let entries = compiled.entries.len();
        self.programmer.set_desired(compiled.entries);
        self.programmer.add_missing(maps, metrics);
        debug!(
            pods = subjects.len(),
            groups = self.groups.len(),
            identities = universe.identities.len(),
            entries,
            elapsed = ?started.elapsed(),
            "policy compiled"
        );
    }

    /// Removes the entries no group wants any more.
    pub(super) fn remove_unwanted(&mut self, maps: &mut DatapathMaps, metrics: &Metrics) {
        self.programmer.remove_unwanted(maps, metrics);
    }
}
