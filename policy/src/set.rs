//! This cluster's NetworkPolicies as last read. A policy that stops
//! parsing keeps its last good version (one warning says why), so a bad
//! edit never opens or closes traffic by accident; one that never parsed
//! is not applied.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tracing::warn;

use crate::rules::Policy;

#[derive(Debug, Default)]
pub struct PolicySet {
    policies: BTreeMap<(String, String), Policy>,
    /// Errors already reported, by policy.
    reported: BTreeMap<(String, String), String>,
}

impl PolicySet {
    /// Reads every policy object; true when the applied policies changed.
    pub fn update<'a>(
        &mut self,
        objects: impl IntoIterator<Item = &'a NetworkPolicy>,
        cluster: &str,
    ) -> bool {
        let mut seen = BTreeSet::new();
        let mut changed = false;
        for object in objects {
            let name = (
                object
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                object.metadata.name.clone().unwrap_or_default(),
            );
            seen.insert(name.clone());
            match Policy::parse(object, cluster) {
                Ok(policy) => {
                    self.reported.remove(&name);
                    if self.policies.get(&name) != Some(&policy) {
                        self.policies.insert(name, policy);
                        changed = true;
                    }
                }
                Err(error) => {
                    if self.reported.get(&name) != Some(&error) {
                        let kept = if self.policies.contains_key(&name) {
                            "its last valid version stays in force"
                        } else {
                            "it is not applied"
                        };
                        warn!(
                            policy = %format!("{}/{}", name.0, name.1),
                            "invalid NetworkPolicy: {error}; {kept} until it is fixed"
                        );
                        self.reported.insert(name, error);
                    }
                }
            }
        }
        let before = self.policies.len();
        self.policies.retain(|name, _| seen.contains(name));
        self.reported.retain(|name, _| seen.contains(name));
        changed || self.policies.len() != before
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> + Clone {
        self.policies.values()
    }

    /// Every prefix the policies' ipBlocks name.
    pub fn cidrs(&self) -> BTreeSet<Ipv4Net> {
        self.policies.values().flat_map(Policy::cidrs).collect()
    }

    /// Policies whose current version does not parse.
    pub fn invalid(&self) -> usize {
        self.reported.len()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}
