//! The agent's side of rollouts: the revision its cluster's target names
//! is applied whole (its policies join the cluster's own, its settings
//! replace the configured ones) or not at all, in which case the agent
//! keeps what it had and reports why. Its report (revision applied, the
//! target seen, readiness, packet counters) is published under its lease.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Agent;
use crate::{
    fleet::{
        follow::Followed,
        keys,
        model::{self, Counters, Report, Settings, VERSION},
    },
    policy::rules::Policy,
};

/// Counters in the report are refreshed this often while a rollout may be
/// watching them (each refresh is one etcd write when traffic flows)...
const COUNTERS_EVERY: Duration = Duration::from_secs(2);
/// ...which is for this long after the cluster's target last changed...
const WATCHED_FOR: Duration = Duration::from_secs(15 * 60);
/// ...and this often otherwise, so an idle fleet of thousands of nodes
/// does not write etcd every few seconds.
const COUNTERS_IDLE_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct FleetState {
    /// The revision the target names.
    target: Option<u64>,
    applied: Option<u64>,
    /// Why the target is not the applied revision.
    error: Option<String>,
    pub policies: Vec<Policy>,
    settings: Settings,
    counters: Counters,
    counted_at: Option<Instant>,
    target_changed_at: Option<Instant>,
}

impl Agent {
    /// A new target from the fleet: applies its revision, or keeps the
    /// current one and says why.
    pub(super) fn on_fleet(&mut self, followed: Followed) {
        let fleet = &mut self.fleet;
        fleet.target_changed_at = Some(Instant::now());
        match followed {
            None => {
                if fleet.applied.is_some() {
                    info!(
                        "no fleet revision targets this cluster any more; back to the local configuration"
                    );
                }
                fleet.target = None;
                fleet.applied = None;
                fleet.error = None;
                fleet.policies.clear();
                fleet.settings = Settings::default();
            }
            Some((target, revision)) => {
                fleet.target = Some(target.revision);
                let checked = revision.and_then(|revision| {
                    revision
                        .bundle
                        .validate(&self.config.cluster.name)
                        .map(|policies| (policies, revision.bundle.settings))
                });
                match checked {
                    Ok((policies, settings)) => {
                        info!(
                            revision = target.revision,
                            policies = policies.len(),
                            "fleet revision applied"
                        );
                        fleet.applied = Some(target.revision);
                        fleet.error = None;
                        fleet.policies = policies;
                        fleet.settings = settings;
                    }
                    Err(error) => {
                        warn!(
                            revision = target.revision,
                            "fleet revision rejected: {error}; keeping {}",
                            fleet
                                .applied
                                .map_or("the local configuration".to_string(), |r| format!(
                                    "revision {r}"
                                ))
                        );
                        fleet.error = Some(error);
                    }
                }
            }
        }
        self.policy_dirty = true;
        self.apply_fleet_settings();
    }

    /// The revision's settings over the configured ones.
    fn apply_fleet_settings(&mut self) {
        let settings = &self.fleet.settings;
        let observe = &self.config.observe;
        let forward_sample = settings.forward_sample.unwrap_or(observe.forward_sample);
        if self.node_config.forward_sample != forward_sample {
            self.node_config.forward_sample = forward_sample;
            if let Err(error) = self.datapath.maps.set_node_config(self.node_config) {
                warn!("cannot update the node config map: {error}");
            }
        }
        let per_second = settings
            .events_per_second
            .unwrap_or(observe.events_per_second);
        self.observability.set_events_per_second(per_second);
    }

    /// Refreshes the report's packet counters, now and then.
    pub(super) fn count_for_fleet(&mut self) {
        let watched = self
            .fleet
            .target_changed_at
            .is_some_and(|at| at.elapsed() < WATCHED_FOR);
        let every = if watched {
            COUNTERS_EVERY
        } else {
            COUNTERS_IDLE_EVERY
        };
        if self.fleet.counted_at.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        let Ok(flows) = self.datapath.maps.metrics() else {
            return;
        };
        let mut counters = Counters::default();
        for (key, value) in flows {
            if dataplane_common::Verdict::from_code(key.reason).is_some() {
                counters.forwarded += value.packets;
            } else {
                counters.dropped += value.packets;
            }
        }
        self.fleet.counters = counters;
        self.fleet.counted_at = Some(Instant::now());
    }

    /// What `fleetnet status` shows of the fleet revision.
    pub(super) fn fleet_status(&self) -> crate::status::FleetStatus {
        crate::status::FleetStatus {
            applied: self.fleet.applied,
            target: self.fleet.target,
            error: self.fleet.error.clone(),
        }
    }

    /// This node's report, to publish under its lease.
    pub(super) fn fleet_report(&self) -> (String, Vec<u8>) {
        let report = Report {
            v: VERSION,
            applied: self.fleet.applied,
            target: self.fleet.target,
            error: self.fleet.error.clone(),
            ready: self.ready,
            counters: self.fleet.counters,
        };
        let key = keys::report(&self.config.cluster.name, &self.config.node.name);
        (key, model::encode(&report))
    }
}
