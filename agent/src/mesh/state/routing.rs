//! How each accepted cluster's pods are reached: natively only when both
//! clusters publish native routing towards each other, through the tunnel
//! otherwise. Both ends read the same two records, so both decide the
//! same; a disagreement tunnels (which works on any underlay) and is
//! reported, never a black hole where one side sends natively and the
//! other expects a tunnel.

use fleetnet_store::records::{ClusterRecord, RoutingMode};
use tracing::{error, info};

use super::*;

/// How the pods of one cluster are reached from this one's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route {
    /// What packets use.
    pub mode: RoutingMode,
    /// When the two clusters disagree: what each publishes towards the
    /// other (this one's, theirs). `mode` is then the tunnel.
    pub mismatch: Option<(RoutingMode, RoutingMode)>,
}

impl Route {
    pub fn is_native(&self) -> bool {
        self.mode == RoutingMode::Native
    }
}

impl MeshState {
    /// How `cluster`'s pods are reached; through the tunnel while the
    /// cluster is not accepted.
    pub fn route(&self, cluster: &str) -> Route {
        self.routes.get(cluster).copied().unwrap_or_default()
    }

    /// Accepted clusters whose routing disagrees with this one's.
    pub fn routing_mismatches(&self) -> impl Iterator<Item = (&str, RoutingMode, RoutingMode)> {
        self.routes.iter().filter_map(|(name, route)| {
            route
                .mismatch
                .map(|(ours, theirs)| (name.as_str(), ours, theirs))
        })
    }

    /// Decides every accepted cluster's route, logging what changed.
    pub(super) fn decide_routes(&mut self) {
        let local = &self.viewpoint;
        let routes: BTreeMap<String, Route> = self
            .accepted
            .iter()
            .map(|(name, record)| {
                let route = if *name == local.cluster {
                    Route {
                        mode: local.routing,
                        mismatch: None,
                    }
                } else {
                    agree(local, name, record)
                };
                (name.clone(), route)
            })
            .collect();
        let changed: Vec<(&String, &Route)> = routes
            .iter()
            .filter(|(name, route)| self.routes.get(*name) != Some(*route))
            .collect();
        let agreed = changed
            .iter()
            .filter(|(name, route)| route.mismatch.is_none() && **name != local.cluster)
            .count();
        if agreed > admission::LOGGED_ONE_BY_ONE {
            let native = changed
                .iter()
                .filter(|(_, route)| route.mismatch.is_none() && route.is_native())
                .count();
            info!(
                native,
                tunnel = agreed - native,
                "routing towards {agreed} clusters decided"
            );
        }
        for (name, route) in changed {
            match route.mismatch {
                Some((ours, theirs)) => error!(
                    cluster = %name,
                    "routing mismatch: this cluster routes {} towards {name}, which routes {} \
                     back; tunnelling until both agree (set routing.mode or routing.peers the \
                     same on both)",
                    ours.label(),
                    theirs.label()
                ),
                None if *name != local.cluster && agreed <= admission::LOGGED_ONE_BY_ONE => {
                    info!(cluster = %name, routing = route.mode.label(), "routing towards cluster")
                }
                None => {}
            }
        }
        self.routes = routes;
    }
}

/// The route to `peer`: what both publish towards each other, or the
/// tunnel when they differ.
fn agree(local: &Viewpoint, peer: &str, record: &ClusterRecord) -> Route {
    let ours = local
        .routing_peers
        .get(peer)
        .copied()
        .unwrap_or(local.routing);
    let theirs = record.routing_towards(&local.cluster);
    if ours == theirs {
        Route {
            mode: ours,
            mismatch: None,
        }
    } else {
        Route {
            mode: RoutingMode::Tunnel,
            mismatch: Some((ours, theirs)),
        }
    }
}
