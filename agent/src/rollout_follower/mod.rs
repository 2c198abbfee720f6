//! The agent's side of rollouts: it follows its cluster's target
//! ([`watch`]), and the revision the target names is applied whole (its
//! policies join the cluster's own, its live settings replace the
//! configured ones) or not at all, in which case the agent keeps what it
//! had and reports why. Its report (revision applied, the target seen,
//! readiness, packet counters) is published under its lease.

mod watch;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use fleetnet_fleet::model::{
    self, AgentRunning, AgentSpec, Counters, LiveSettings, Report, VERSION,
};
use fleetnet_policy::rules::Policy;
use fleetnet_store::fleet_keys as keys;
use tracing::{info, warn};

pub use self::watch::{Followed, run};
use crate::{api::status::FleetStatus, datapath::DatapathMaps};

/// Counters in the report are refreshed this often while a rollout may be
/// watching them (each refresh is one etcd write when traffic flows)...
pub const COUNTERS_EVERY: Duration = Duration::from_secs(2);
/// ...which is for this long after the cluster's target last changed...
const WATCHED_FOR: Duration = Duration::from_secs(15 * 60);
/// ...and this often otherwise, so an idle fleet of thousands of nodes
/// does not write etcd every few seconds.
const COUNTERS_IDLE_EVERY: Duration = Duration::from_secs(60);

/// Whether a reading `elapsed` ago (none: never) is due again for one
/// `every`, on a caller ticking every `tick`. Ticks land a little early or
/// late, so "less than `every` passed" would skip the tick that lands just
/// short of it and read every `every + tick`: a reading is due from half a
/// tick before `every`.
fn due(elapsed: Option<Duration>, every: Duration, tick: Duration) -> bool {
    elapsed.is_none_or(|elapsed| elapsed + tick / 2 >= every)
}

/// The revision this cluster targets, and what this node did with it.
#[derive(Default)]
pub struct RolloutFollower {
    /// The revision the target names.
    target: Option<u64>,
    applied: Option<u64>,
    /// Why the target is not the applied revision.
    error: Option<String>,
    policies: Vec<Policy>,
    settings: LiveSettings,
    counters: Counters,
    counted_at: Option<Instant>,
    target_changed_at: Option<Instant>,
    /// The image and restart settings this agent started with.
    running: AgentRunning,
    /// The agent the applied revision names (none: the DaemonSet's own).
    agent: Option<AgentSpec>,
}

impl RolloutFollower {
    /// A follower for an agent started with `running`.
    pub fn new(running: AgentRunning) -> Self {
        Self {
            running,
            ..Self::default()
        }
    }

    /// The agent the applied revision carries, which the cluster's leader
    /// writes into the DaemonSet; none to put the DaemonSet's own back.
    pub fn agent(&self) -> Option<&AgentSpec> {
        self.agent.as_ref()
    }

    /// A new target from the fleet: applies its revision (checked as
    /// `cluster` reads it), or keeps the current one and says why.
    pub fn on_target(&mut self, followed: Followed, cluster: &str) {
        self.target_changed_at = Some(Instant::now());
        match followed {
            None => {
                if self.applied.is_some() {
                    info!(
                        "no fleet revision targets this cluster any more; back to the local configuration"
                    );
                }
                self.target = None;
                self.applied = None;
                self.error = None;
                self.policies.clear();
                self.settings = LiveSettings::default();
                self.agent = None;
            }
            Some((target, revision)) => {
                self.target = Some(target.revision);
                let checked = revision.and_then(|revision| {
                    revision
                        .bundle
                        .validate(cluster)
                        .map(|policies| (policies, revision.bundle))
                });
                match checked {
                    Ok((policies, bundle)) => {
                        info!(
                            revision = target.revision,
                            policies = policies.len(),
                            "fleet revision applied"
                        );
                        self.applied = Some(target.revision);
                        self.error = None;
                        self.policies = policies;
                        self.settings = bundle.settings;
                        self.agent = bundle.agent;
                    }
                    Err(error) => {
                        warn!(
                            revision = target.revision,
                            "fleet revision rejected: {error}; keeping {}",
                            self.applied
                                .map_or("the local configuration".to_string(), |r| format!(
                                    "revision {r}"
                                ))
                        );
                        self.error = Some(error);
                    }
                }
            }
        }
    }

    /// The applied revision's policies, applied besides the cluster's own.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The applied revision's live settings (unset: the agent's own).
    pub fn settings(&self) -> &LiveSettings {
        &self.settings
    }

    /// Refreshes the report's packet counters from the datapath when due;
    /// called every `tick`.
    pub fn count(&mut self, maps: &DatapathMaps, tick: Duration) {
        let watched = self
            .target_changed_at
            .is_some_and(|at| at.elapsed() < WATCHED_FOR);
        let every = if watched {
            COUNTERS_EVERY
        } else {
            COUNTERS_IDLE_EVERY
        };
        if !due(self.counted_at.map(|at| at.elapsed()), every, tick) {
            return;
        }
        let Ok(flows) = maps.metrics() else {
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
        counters.at_unix = fleetnet_store::time::unix_now();
        self.counters = counters;
        self.counted_at = Some(Instant::now());
    }

    /// What `fleetnet status` shows of the fleet revision.
    pub fn status(&self) -> FleetStatus {
        FleetStatus {
            applied: self.applied,
            target: self.target,
            error: self.error.clone(),
        }
    }

    /// This node's report, to publish under its lease.
    /// `balanced_to`: live load-balanced connections by backend cluster,
    /// and when they were counted.
    pub fn report(
        &self,
        ready: bool,
        cluster: &str,
        node: &str,
        balanced_to: (BTreeMap<String, u64>, f64),
    ) -> (String, Vec<u8>) {
        let report = Report {
            v: VERSION,
            applied: self.applied,
            target: self.target,
            error: self.error.clone(),
            ready,
            counters: self.counters,
            version: crate::version().into(),
            connections_to: balanced_to.0,
            connections_counted: balanced_to.1,
            agent: self.running.clone(),
        };
        (keys::report(cluster, node), model::encode(&report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 s tick that lands a few milliseconds early reads the counters
    /// every 2 s, as the docs say, not every 3.
    #[test]
    fn counters_are_read_at_the_documented_cadence() {
        let tick = Duration::from_secs(1);
        let mut readings = Vec::new();
        let mut last: Option<Duration> = None;
        for n in 0..20u64 {
            // Every tick after the first lands 3 ms early.
            let now = Duration::from_millis(n * 1000 - if n > 0 { 3 } else { 0 });
            if due(last.map(|at| now - at), COUNTERS_EVERY, tick) {
                readings.push(now);
                last = Some(now);
            }
        }
        let gaps: Vec<u128> = readings
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect();
        assert!(
            gaps.iter().all(|gap| (1900..=2100).contains(gap)),
            "readings {gaps:?} ms apart"
        );
        assert!(due(None, COUNTERS_EVERY, tick), "the first is due at once");
    }
}
