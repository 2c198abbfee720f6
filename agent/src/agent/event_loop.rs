//! The agent's loop: one task owns every part and reacts to each input in
//! turn, then brings what depends on it up to date. Parts never reach into
//! each other; what crosses from one to another crosses here.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use dataplane_common::{FlowEvent, IpcacheEntry, identity, maps as names};
use etcd_client::Client;
use fleetnet_policy::identity::Labels;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::{
    AgentError,
    identities::{self, PodIdentities},
    mesh_view::MeshView,
    node::{ThisNode, Underlay},
    observability::{self, Observability, Programmed, Snapshot},
    policy::{Peers, PolicyEngine},
    services::ServiceEngine,
};
use crate::{
    config::AgentConfig,
    daemonset::DaemonSetUpdater,
    datapath::{
        Datapath,
        netlink::Netlink,
        programmers::{endpoints::EndpointProgrammer, ipcache::IpcacheProgrammer},
    },
    mesh::{
        identity as identity_store, publish, publish::Publisher, registration::RegistrationError,
        watcher::MeshEvent,
    },
    metrics::Metrics,
    rollout_follower::{Followed, RolloutFollower},
    source::{
        SourceEvent,
        state::{NodePod, SourceState},
    },
};

/// The event loop's heartbeat: readiness, observability and the rollout
/// report's counters are looked at this often.
const TICK: Duration = Duration::from_secs(1);

pub(super) struct Agent {
    pub(super) config: AgentConfig,
    /// This cluster as the source reports it.
    pub(super) source: SourceState,
    pub(super) node: ThisNode,
    pub(super) mesh: MeshView,
    pub(super) identities: PodIdentities,
    pub(super) endpoints: EndpointProgrammer,
    pub(super) ipcache: IpcacheProgrammer,
    pub(super) policy: PolicyEngine,
    pub(super) services: ServiceEngine,
    pub(super) publisher: Publisher,
    pub(super) rollout: RolloutFollower,
    /// Writes the applied revision's agent into the DaemonSet (the leader).
    pub(super) daemonset: DaemonSetUpdater,
    pub(super) observability: Observability,
    /// The cluster's name and id are claimed in etcd.
    pub(super) registered: bool,
    pub(super) ready: bool,
    pub(super) datapath: Datapath,
    pub(super) netlink: Netlink,
    pub(super) client: Client,
    pub(super) metrics: Arc<Metrics>,
}

impl Agent {
    pub(super) async fn serve(
        &mut self,
        mut source: mpsc::Receiver<SourceEvent>,
        mut mesh: mpsc::Receiver<MeshEvent>,
        mut registered: oneshot::Receiver<Result<(), RegistrationError>>,
        mut flows: mpsc::Receiver<Vec<FlowEvent>>,
        mut fleet: mpsc::Receiver<Followed>,
    ) -> Result<(), AgentError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let (identity_tx, mut identity_rx) = mpsc::channel(1024);
        let mut tick = tokio::time::interval(TICK);
        loop {
            let mut local_changed = false;
            let mut mesh_arrived = None;
            tokio::select! {
                Some(event) = source.recv() => {
                    self.source.apply(event);
                    while let Ok(event) = source.try_recv() {
                        self.source.apply(event);
                    }
                    local_changed = true;
                    self.policy.mark_dirty();
                }
                Some(event) = mesh.recv() => {
                    mesh_arrived = Some(Instant::now());
                    observability::mesh_changed(&self.metrics);
                    let mut events = vec![event];
                    while let Ok(event) = mesh.try_recv() {
                        events.push(event);
                    }
                    local_changed |= self.on_mesh(events);
                    self.mesh.update_metrics(&self.metrics);
                    self.observability
                        .set_refused(self.mesh.state.refused(), &self.metrics);
                    self.count_bytes_written();
                    if self.mesh.state.retired() {
                        return Err(self.leave_retired().await);
                    }
                }
                Some(resolution) = identity_rx.recv() => {
                    let mut resolutions: Vec<identities::Resolution> = vec![resolution];
                    while let Ok(resolution) = identity_rx.try_recv() {
                        resolutions.push(resolution);
                    }
                    for resolution in resolutions {
                        if resolution.1.is_err() {
                            self.metrics.etcd_error("identity");
                        }
                        self.identities.resolved(resolution);
                    }
                    local_changed = true;
                    self.policy.mark_dirty();
                }
                outcome = &mut registered, if !self.registered => {
                    match outcome {
                        Ok(Ok(())) => {
                            info!(cluster = %self.config.cluster.name, id = self.config.cluster.id, "cluster registered in the mesh");
                            self.registered = true;
                            local_changed = true;
                        }
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => self.registered = true,
                    }
                }
                Some(events) = flows.recv() => self.observability.record_flows(
                    events,
                    &self.mesh.state,
                    &self.config.cluster.name,
                    &self.config.node.name,
                ),
                Some(followed) = fleet.recv() => {
                    self.on_fleet(followed);
                    local_changed = true;
                }
                _ = tick.tick() => {
                    local_changed = true;
                    self.refresh_observability();
                    self.rollout.count(&self.datapath.maps, TICK);
                }
                _ = terminate.recv() => return Ok(()),
                _ = interrupt.recv() => return Ok(()),
            }
            if self.mesh.state.take_peers_changed() {
                self.policy.mark_dirty();
            }
            if local_changed && self.source.synced() {
                self.services.read(&self.source);
            }
            if (local_changed || self.policy.is_dirty()) && self.source.synced() {
                self.reconcile_local(&identity_tx).await;
            }
            if self.source.synced() && (local_changed || self.mesh.state.take_services_changed()) {
                self.services.program(
                    &self.mesh.state,
                    self.config.cluster.id,
                    &mut self.datapath.maps,
                    &self.metrics,
                );
            }
            if let Some(arrived) = mesh_arrived {
                self.metrics
                    .sync_latency
                    .observe(arrived.elapsed().as_secs_f64());
            }
            self.check_ready();
        }
    }

    /// This cluster was retired: its node leaves the mesh now (the session's
    /// lease revoked, so its keys go at once rather than after the TTL)
    /// and the agent stops.
    async fn leave_retired(&mut self) -> AgentError {
        let lease = self
            .publisher
            .session()
            .and_then(|session| session.status().borrow().lease);
        if let Some(lease) = lease {
            let revoke = self.client.lease_revoke(lease);
            if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(2), revoke).await {
                warn!("cannot revoke this node's lease; its keys expire with it: {error}");
            }
        }
        AgentError::Retired(self.config.cluster.name.clone())
    }

    /// Applies mesh events in order, each run of watched changes together;
    /// true when local state must be looked at again.
    fn on_mesh(&mut self, events: Vec<MeshEvent>) -> bool {
        let mut local_changed = false;
        let mut updates = Vec::new();
        let listed = events
            .iter()
            .any(|event| matches!(event, MeshEvent::Listing(_)));
        for event in events {
            match event {
                MeshEvent::Update(update) => updates.push(update),
                other => {
                    if !updates.is_empty() {
                        local_changed |= self.on_mesh_updates(std::mem::take(&mut updates));
                    }
                    let applied = self.mesh.apply(
                        other,
                        &self.config.cluster.name,
                        self.identities.ids(),
                        &self.metrics,
                    );
                    local_changed |= self.after_mesh(applied);
                }
            }
        }
        if !updates.is_empty() {
            local_changed |= self.on_mesh_updates(updates);
        }
        if listed {
            super::memory::release_freed();
        }
        local_changed
    }

    fn on_mesh_updates(&mut self, updates: Vec<fleetnet_store::Update>) -> bool {
        let applied = self
            .mesh
            .apply_updates(updates, &self.config.cluster.name, &self.metrics);
        self.after_mesh(applied)
    }

    /// Programs what applying mesh events changed.
    fn after_mesh(&mut self, applied: super::mesh_view::Applied) -> bool {
        if applied.etcd_back {
            // etcd answers: what waits to retry need not wait longer.
            self.identities.retry_now();
            if let Some(session) = self.publisher.session() {
                session.wake();
            }
        }
        let mut local_changed = false;
        for id in applied.identities_gone {
            local_changed |= self.identities.forget(id);
        }
        self.ipcache
            .apply_mesh(applied.changes, &mut self.datapath.maps, &self.metrics);
        local_changed
    }

    /// The session's written bytes, into the counter.
    fn count_bytes_written(&self) {
        if let Some(session) = self.publisher.session() {
            let written = session.bytes_written();
            let counted = self.metrics.etcd_bytes_written.get();
            self.metrics
                .etcd_bytes_written
                .inc_by(written.saturating_sub(counted));
        }
    }

    /// A new target from the fleet: its revision applied (or refused), and
    /// its live settings over the configured ones.
    fn on_fleet(&mut self, followed: Followed) {
        self.rollout.on_target(followed, &self.config.cluster.name);
        self.daemonset.want(self.rollout.agent());
        self.policy.mark_dirty();
        let settings = self.rollout.settings();
        let observe = &self.config.observe;
        self.node.set_forward_sample(
            settings.forward_sample.unwrap_or(observe.forward_sample),
            &mut self.datapath.maps,
        );
        self.observability.set_events_per_second(
            settings
                .events_per_second
                .unwrap_or(observe.events_per_second),
        );
    }

    /// Holds pods to what the underlay carries, and, where peers are
    /// routed natively, receives from them on the uplink.
    fn use_underlay(&mut self, underlay: Underlay) {
        let routing = &self.config.routing;
        // Pods may use the underlay's whole MTU only where nothing of
        // theirs is tunnelled.
        let limit = if routing.only_native() {
            underlay.mtu
        } else {
            underlay.path_mtu
        };
        self.endpoints.set_path_mtu(limit);
        self.metrics.path_mtu.set(i64::from(limit));
        if !routing.uses_native() {
            // An earlier agent's, configured otherwise, would refuse
            // unencapsulated packets nobody sends any more; it goes.
            if let Some(uplink) = &underlay.uplink {
                self.datapath
                    .detach_left_over(names::PROG_FROM_UNDERLAY, uplink.index);
            }
            return;
        }
        match &underlay.uplink {
            Some(uplink) => {
                if let Err(error) =
                    self.datapath
                        .attach(names::PROG_FROM_UNDERLAY, &uplink.name, uplink.index)
                {
                    error!(
                        "cannot receive natively routed packets on {}: {error}",
                        uplink.name
                    );
                }
            }
            None => error!(
                "routing.mode is native but no interface holds this node's address, so \
                 natively routed packets cannot be received; give node.ip the uplink's address"
            ),
        }
    }

    /// Brings the datapath, identities and published keys in line with the
    /// local source.
    async fn reconcile_local(&mut self, identity_tx: &mpsc::Sender<identities::Resolution>) {
        let (cluster, node) = (
            self.config.cluster.name.clone(),
            self.config.node.name.clone(),
        );
        let pods = self
            .source
            .node_pods(&node, &cluster, self.config.mesh.export);
        self.node
            .update(&self.config.node, &self.source, &mut self.datapath.maps);
        if let Some(underlay) = self
            .node
            .find_underlay(&self.config.routing, &self.netlink, &mut self.datapath.maps)
            .await
        {
            self.use_underlay(underlay);
        }

        let wanted: BTreeSet<&Labels> = pods.values().map(|pod| &pod.identity_labels).collect();
        self.identities.keep_only(&wanted);
        // Identities live in the cluster's keyspace: claim the name first.
        if self.registered {
            self.identities.request(
                wanted.iter().copied(),
                &self.client,
                &cluster,
                self.config.cluster.id,
                identity_tx,
            );
        }
        // A group's entries go in before its endpoints use them, and come
        // out once no endpoint does.
        self.policy
            .read(self.source.policies(), &cluster, &self.metrics);
        let peers = Peers {
            mesh: &self.mesh.state,
            identities: &self.identities,
            endpoints: &self.endpoints,
            fleet: self.rollout.policies(),
        };
        self.policy.compile(
            &pods,
            &cluster,
            peers,
            &mut self.ipcache,
            &mut self.datapath.maps,
            &self.metrics,
        );
        let identities = &self.identities;
        let identity_of = |pod: &NodePod| identities.get(&pod.identity_labels);
        let (policy, fleet) = (&self.policy, self.rollout.policies());
        let policy_of = |pod: &NodePod| policy.assignment(pod, &cluster, fleet);
        if let Err(error) = self
            .endpoints
            .reconcile(
                &pods,
                identity_of,
                policy_of,
                &self.netlink,
                &mut self.datapath,
                &self.metrics,
            )
            .await
        {
            warn!("cannot read this node's routes: {error}");
        }
        // Entries of peers not listed yet may still be in use (pinned maps
        // of a previous run): nothing is removed before the mesh is listed.
        if self.mesh.listed() {
            self.policy
                .remove_unwanted(&mut self.datapath.maps, &self.metrics);
        }
        self.observability.set_pods(&pods, identity_of);

        let layer = self.local_ipcache(&pods);
        self.ipcache
            .set_local(layer, &mut self.datapath.maps, &self.metrics);
        if self.mesh.listed() {
            self.ipcache.prune(&mut self.datapath.maps, &self.metrics);
        }

        // Publish once registered and the first identity round is done, so
        // the session never starts from a partial set of keys.
        if self.registered && (self.publisher.session().is_some() || self.identities.settled()) {
            let mut keys = publish::own_keys(&cluster, &node, self.node.info(), &pods, identity_of);
            let leader = self
                .publisher
                .session()
                .is_some_and(|session| session.status().borrow().leader);
            let nodes = self.source.node_cidrs();
            let placement = crate::services::merge::Placement {
                node: &node,
                nodes: &nodes,
                cluster_cidrs: &self.config.cluster.pod_cidrs,
                leader,
            };
            keys.extend(self.services.exports(&cluster, &placement));
            let balanced_to = self.observability.balanced_to();
            keys.extend([self
                .rollout
                .report(self.ready, &cluster, &node, balanced_to)]);
            let ttl = Duration::from_secs(self.config.etcd.lease_ttl_seconds);
            let started = self
                .publisher
                .publish(keys, &self.client, &cluster, &node, ttl);
            if let (true, Some(session)) = (started, self.publisher.session()) {
                identity_store::spawn_collection(
                    self.client.clone(),
                    cluster,
                    Duration::from_secs(self.config.identities.gc_grace_seconds),
                    session.status(),
                );
                self.daemonset.start(session.status());
            }
        }
    }

    /// The ipcache entries this node decides: its pod CIDRs (pods known by
    /// address only) and its pods with their identities.
    fn local_ipcache(
        &self,
        pods: &BTreeMap<std::net::Ipv4Addr, NodePod>,
    ) -> BTreeMap<Ipv4Net, IpcacheEntry> {
        let entry = |identity| IpcacheEntry {
            identity,
            tunnel_endpoint: [0; 4],
            cluster_id: self.config.cluster.id,
            flags: 0,
        };
        let mut layer = BTreeMap::new();
        if let Some(info) = self.node.info() {
            for cidr in &info.pod_cidrs {
                layer.insert(*cidr, entry(identity::UNMANAGED));
            }
        }
        for (ip, pod) in pods {
            let id = self
                .identities
                .get(&pod.identity_labels)
                .unwrap_or(identity::INIT);
            layer.insert(Ipv4Net::from(*ip), entry(id));
        }
        layer
    }

    /// Once a second: the status and the metrics that describe the agent.
    fn refresh_observability(&mut self) {
        let (services, backends) = self.services.counts();
        let snapshot = Snapshot {
            config: &self.config,
            ready: self.ready,
            mesh: &self.mesh.state,
            service_names: self.services.names(),
            session: self.publisher.session(),
            programmed: Programmed {
                ipcache: self.ipcache.entries(),
                endpoints: self.endpoints.entries(),
                services,
                backends,
                policy: self.policy.entries(),
            },
            pods: self.endpoints.attached().count(),
            policies: self.policy.count(),
            fleet: self.rollout.status(),
        };
        self.observability.refresh(snapshot, &self.metrics);
    }

    fn check_ready(&mut self) {
        let synced = self
            .publisher
            .session()
            .is_some_and(|s| s.status().borrow().synced);
        let ready = self.source.synced()
            && self.node.info().is_some()
            && self.mesh.listed()
            && self.registered
            && synced;
        self.metrics.set_ready(ready);
        if ready && !self.ready {
            info!(
                cluster = %self.config.cluster.name,
                node = %self.config.node.name,
                pods = self.endpoints.attached().count(),
                remote_endpoints = self.mesh.state.endpoint_count(),
                "fleetnet agent ready"
            );
        }
        if !ready && self.ready {
            warn!("not ready: lost sync with the source or etcd");
        }
        let changed = ready != self.ready;
        self.ready = ready;
        if changed {
            self.refresh_observability();
        }
    }
}
