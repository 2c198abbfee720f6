//! Programs the policy map from the compiled groups' entries, touching only
//! the entries that change. New entries go in before endpoints start
//! enforcing (see the agent loop), entries no longer wanted come out last,
//! so a change never denies for a moment what stays allowed. Entries found
//! in reused pinned maps stay until the first compile replaces them.

use std::collections::BTreeSet;

use dataplane_common::PolicyKey;
use tracing::warn;

use crate::{
    datapath::DatapathMaps,
    metrics::{MapLabel, Metrics},
};

pub struct PolicyProgrammer {
    programmed: BTreeSet<(PolicyKey, u32)>,
    desired: BTreeSet<(PolicyKey, u32)>,
    warned_full: bool,
}

impl PolicyProgrammer {
    /// Starts from what the map holds now.
    pub fn new(existing: Vec<(PolicyKey, u32)>) -> Self {
        let programmed: BTreeSet<_> = existing.into_iter().collect();
        Self {
            desired: programmed.clone(),
            programmed,
            warned_full: false,
        }
    }

    /// Entries in the map.
    pub fn entries(&self) -> usize {
        self.programmed.len()
    }

    /// What the map should hold from now on.
    pub fn set_desired(&mut self, entries: BTreeSet<(PolicyKey, u32)>) {
        self.desired = entries;
    }

    /// Writes desired entries the map lacks.
    pub fn add_missing(&mut self, maps: &mut DatapathMaps, metrics: &Metrics) {
        let missing: Vec<(PolicyKey, u32)> =
            self.desired.difference(&self.programmed).copied().collect();
        for (key, bits) in missing {
            match maps.upsert_policy(key, bits) {
                Ok(()) => {
                    self.programmed.insert((key, bits));
                }
                Err(error) => {
                    // A full map denies what it cannot hold: fail closed.
                    if !self.warned_full {
                        self.warned_full = true;
                        warn!(
                            "cannot write the policy map ({error}); traffic these entries \
                             would allow is denied; raise bpf.policy-max-entries"
                        );
                    }
                    count_error(metrics);
                }
            }
        }
        metrics.policy_entries.set(self.programmed.len() as i64);
    }

    /// Removes entries no longer desired.
    pub fn remove_unwanted(&mut self, maps: &mut DatapathMaps, metrics: &Metrics) {
        let unwanted: Vec<(PolicyKey, u32)> =
            self.programmed.difference(&self.desired).copied().collect();
        for (key, bits) in unwanted {
            match maps.remove_policy(key, bits) {
                Ok(()) => {
                    self.programmed.remove(&(key, bits));
                }
                Err(error) => {
                    warn!("cannot remove a policy map entry: {error}");
                    count_error(metrics);
                }
            }
        }
        metrics.policy_entries.set(self.programmed.len() as i64);
    }
}

fn count_error(metrics: &Metrics) {
    metrics
        .map_write_errors
        .get_or_create(&MapLabel {
            map: "policy".into(),
        })
        .inc();
}
