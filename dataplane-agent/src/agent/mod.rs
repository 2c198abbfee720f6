//! `fleetnet agent`: one node's agent. It loads the datapath, then runs one
//! loop that owns all state and reacts to four inputs:
//!
//! - the source (Kubernetes or a manifests directory): this node and its
//!   pods, which become endpoints in the datapath, local ipcache entries,
//!   identities, and this node's keys in etcd; Services; NetworkPolicies,
//!   compiled against every cluster's identities into the policy map;
//! - the mesh watch: what every other node of every cluster published,
//!   validated ([`crate::mesh::state`]) and turned into ipcache changes;
//! - identity allocations finishing;
//! - a one-second tick that retries pods waiting for their interface.
//!
//! etcd being unreachable stops nothing local: the datapath keeps its last
//! state, pods on this node keep being attached, and everything is
//! published and reconciled once etcd is back.

mod endpoints;
mod fleet;
mod identities;
mod ipcache;
mod observability;
mod policy;
mod publish;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use dataplane_common::{FlowEvent, IpcacheEntry, NodeConfig, identity, maps as names};
use etcd_client::Client;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use self::{
    endpoints::LocalEndpoints, identities::Identities, ipcache::IpcacheProgrammer,
    policy::PolicyProgrammer, publish::Publisher,
};
use crate::{
    bpffs::{self, BpffsError},
    config::{AgentConfig, SourceConfig},
    datapath::{Datapath, DatapathError, MapAccessError, MapSizes},
    local::{LocalPod, LocalState, NodeInfo},
    mesh::{
        etcd::{self, EtcdError, Retry, TlsFiles},
        identity::{IdentityCollector, Labels},
        keys::{self, Key},
        registration::{self, RegistrationError},
        state::{LocalView, MeshState, Update},
        watcher::{self, MeshEvent},
    },
    metrics::{
        ClusterLabel, KindLabel, Metrics,
        server::{self, Shared},
    },
    netlink::{Netlink, NetlinkError},
    policy::{
        compile::{self, Assignment, LocalEndpoint, PeerLabels, Universe},
        groups::PolicyGroups,
        rules::Policy,
        set::PolicySet,
    },
    privileges::{self, MissingPrivileges},
    services::{catalog::Catalog, merge, programmer::ServiceProgrammer},
    source::{self, Kind, SourceEvent, kube::KubeError, manifests::ManifestsError},
};

#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Leave maps and attached programs pinned on shutdown for the next agent.
    pub keep_pins: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Privileges(#[from] MissingPrivileges),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Maps(#[from] MapAccessError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    #[error(transparent)]
    Manifests(#[from] ManifestsError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("cannot serve metrics on {address}: {source}")]
    Metrics {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot listen for termination signals: {0}")]
    Signals(std::io::Error),
}

/// How often identities are checked for collection (by the elected agent).
fn gc_interval(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

pub async fn run(config: AgentConfig, options: RunOptions) -> Result<(), AgentError> {
    privileges::check()?;
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared::new(
        metrics.clone(),
        config.observe.flows_kept as usize,
    ));
    if let Ok(address) = config.metrics.listen.parse() {
        server::serve(address, shared.clone())
            .await
            .map_err(|source| AgentError::Metrics {
                address: config.metrics.listen.clone(),
                source,
            })?;
    }
    let netlink = Netlink::connect()?;
    // The source is checked before anything changes on the node.
    let (source_tx, source_rx) = mpsc::channel(4096);
    match &config.source {
        SourceConfig::Manifests { directory } => {
            source::manifests::ManifestDir::new(directory)?;
            let directory = directory.clone();
            tokio::spawn(async move {
                if let Err(error) = source::manifests::run(directory, source_tx).await {
                    error!("manifests source stopped: {error}");
                }
            });
        }
        SourceConfig::Kube { kubeconfig } => {
            let client = source::kube::client(kubeconfig.as_deref()).await?;
            tokio::spawn(source::kube::run(
                client,
                config.node.name.clone(),
                source_tx,
            ));
        }
    }

    // So are the etcd credentials: refused ones stop the agent here. A
    // login etcd does not answer within seconds goes on in the background.
    let tls = config.etcd.tls.as_ref().map(|tls| TlsFiles {
        ca_file: tls.ca_file.clone(),
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
    });
    let credentials = config.etcd_credentials();
    let client =
        etcd::connect_as(&config.etcd.endpoints, tls.as_ref(), credentials.as_ref()).await?;

    let tunnel = netlink
        .ensure_vxlan(&config.tunnel.device, config.tunnel.port)
        .await?;
    let pin_dir = config.pin_dir();
    bpffs::ensure(&config.bpf.root, &pin_dir)?;
    let sizes = MapSizes {
        ipcache: config.bpf.ipcache_max_entries,
        endpoints: config.bpf.endpoints_max_entries,
        metrics: config.bpf.metrics_max_entries,
        services: config.services.max_services,
        backends: config.bpf.backends_max_entries,
        conntrack: config.bpf.conntrack_max_entries,
        policy: config.bpf.policy_max_entries,
        maglev_table_size: config.services.maglev_table_size,
        max_service_ids: config.services.max_services,
    };
    let mut datapath = Datapath::load(sizes, Some(&pin_dir))?;
    let node_config = NodeConfig {
        node_ip: config.node.ip.map_or([0; 4], |ip| ip.octets()),
        tunnel_ifindex: tunnel.index,
        cluster_id: config.cluster.id,
        forward_sample: config.observe.forward_sample,
        maglev_table_size: config.services.maglev_table_size,
    };
    datapath.maps.set_node_config(node_config)?;
    datapath.attach(names::PROG_FROM_OVERLAY, &tunnel.name, tunnel.index)?;
    let (observability, flows_rx) = observability::start(&config, &pin_dir, sizes, shared);

    let (mesh_tx, mesh_rx) = mpsc::channel(16384);
    tokio::spawn(watcher::run(client.clone(), mesh_tx));
    let (fleet_tx, fleet_rx) = mpsc::channel(16);
    tokio::spawn(crate::fleet::follow::run(
        client.clone(),
        config.cluster.name.clone(),
        fleet_tx,
    ));
    let (registered_tx, registered_rx) = oneshot::channel();
    tokio::spawn(register(
        client.clone(),
        config.clone(),
        metrics.clone(),
        registered_tx,
    ));

    let mut agent = Agent {
        local_view: LocalView {
            cluster: config.cluster.name.clone(),
            cluster_id: config.cluster.id,
            pod_cidrs: config.cluster.pod_cidrs.clone(),
            node: config.node.name.clone(),
        },
        mesh: MeshState::new(LocalView {
            cluster: config.cluster.name.clone(),
            cluster_id: config.cluster.id,
            pod_cidrs: config.cluster.pod_cidrs.clone(),
            node: config.node.name.clone(),
        }),
        ipcache: IpcacheProgrammer::new(datapath.maps.ipcache()?),
        services: ServiceProgrammer::new(
            datapath.maps.services()?,
            datapath.maps.backends()?,
            config.services.maglev_table_size,
            config.services.max_services,
        ),
        catalog: Catalog::default(),
        warned_services: BTreeSet::new(),
        endpoints: LocalEndpoints::new(datapath.maps.endpoints()?),
        policies: PolicySet::default(),
        universe: Universe::default(),
        groups: PolicyGroups::default(),
        assignments: BTreeMap::new(),
        policy: PolicyProgrammer::new(datapath.maps.policy()?),
        policy_dirty: true,
        local: LocalState::default(),
        identities: Identities::default(),
        publisher: Publisher::default(),
        node_config,
        node_info: None,
        registered: false,
        mesh_listed: false,
        ready: false,
        gc_started: false,
        warned_no_node: false,
        invalid_seen: Default::default(),
        observability,
        fleet: fleet::FleetState::default(),
        pod_names: BTreeMap::new(),
        service_names: BTreeMap::new(),
        datapath,
        netlink,
        client,
        metrics,
        config,
    };
    let outcome = agent
        .serve(source_rx, mesh_rx, registered_rx, flows_rx, fleet_rx)
        .await;
    let Agent { datapath, .. } = agent;
    if options.keep_pins {
        info!("leaving the datapath in place (maps and links pinned) for the next agent");
        drop(datapath);
    } else {
        info!("detaching and removing pinned maps");
        datapath.unpin()?;
    }
    outcome
}

/// Registers the cluster, retrying while etcd is unreachable; a conflict is
/// final and stops the agent.
async fn register(
    mut client: Client,
    config: AgentConfig,
    metrics: Arc<Metrics>,
    done: oneshot::Sender<Result<(), RegistrationError>>,
) {
    let mut retry = Retry::new("cluster registration");
    loop {
        match registration::register_labelled(
            &mut client,
            &config.cluster.name,
            config.cluster.id,
            &config.cluster.pod_cidrs,
            &config.cluster.labels,
        )
        .await
        {
            Err(RegistrationError::Etcd(error)) => {
                metrics.etcd_error("registration");
                let wait = retry.failed(&format_args!("cannot register the cluster yet ({error})"));
                tokio::time::sleep(wait).await;
            }
            outcome => {
                retry.succeeded();
                let _ = done.send(outcome);
                return;
            }
        }
    }
}

struct Agent {
    config: AgentConfig,
    local_view: LocalView,
    local: LocalState,
    mesh: MeshState,
    ipcache: IpcacheProgrammer,
    services: ServiceProgrammer,
    /// This cluster's services as last read from the source.
    catalog: Catalog,
    /// Annotation warnings already logged (service and message).
    warned_services: BTreeSet<String>,
    endpoints: LocalEndpoints,
    /// This cluster's NetworkPolicies as last read.
    policies: PolicySet,
    /// What policy peers are chosen from (kept for its CIDR identities).
    universe: Universe,
    groups: PolicyGroups,
    /// Each local pod's policy group and enforcement, as last compiled.
    assignments: BTreeMap<Ipv4Addr, Assignment>,
    policy: PolicyProgrammer,
    /// Policies, pods or peers changed since the last compile.
    policy_dirty: bool,
    identities: Identities,
    publisher: Publisher,
    node_config: NodeConfig,
    node_info: Option<NodeInfo>,
    registered: bool,
    mesh_listed: bool,
    ready: bool,
    gc_started: bool,
    warned_no_node: bool,
    invalid_seen: BTreeMap<&'static str, u64>,
    observability: observability::Observability,
    /// The fleet revision this cluster targets, and what this node did
    /// with it.
    fleet: fleet::FleetState,
    /// This node's pods by address: namespace, name, identity (for flows).
    pod_names: BTreeMap<Ipv4Addr, (String, String, Option<u32>)>,
    /// Service ids in the datapath, named `namespace/name` (for metrics).
    service_names: BTreeMap<u32, String>,
    datapath: Datapath,
    netlink: Netlink,
    client: Client,
    metrics: Arc<Metrics>,
}

impl Agent {
    async fn serve(
        &mut self,
        mut source: mpsc::Receiver<SourceEvent>,
        mut mesh: mpsc::Receiver<MeshEvent>,
        mut registered: oneshot::Receiver<Result<(), RegistrationError>>,
        mut flows: mpsc::Receiver<Vec<FlowEvent>>,
        mut fleet: mpsc::Receiver<crate::fleet::follow::Followed>,
    ) -> Result<(), AgentError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let (identity_tx, mut identity_rx) = mpsc::channel(1024);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let mut local_changed = false;
            let mut mesh_arrived = None;
            tokio::select! {
                Some(event) = source.recv() => {
                    self.local.apply(event);
                    while let Ok(event) = source.try_recv() {
                        self.local.apply(event);
                    }
                    local_changed = true;
                    self.policy_dirty = true;
                }
                Some(event) = mesh.recv() => {
                    mesh_arrived = Some(Instant::now());
                    observability::mesh_changed(&self.metrics);
                    local_changed |= self.on_mesh(event);
                    while let Ok(event) = mesh.try_recv() {
                        local_changed |= self.on_mesh(event);
                    }
                    self.mesh_metrics();
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
                    self.policy_dirty = true;
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
                Some(events) = flows.recv() => self.record_flows(events),
                Some(followed) = fleet.recv() => {
                    self.on_fleet(followed);
                    local_changed = true;
                }
                _ = tick.tick() => {
                    local_changed = true;
                    self.refresh_observability();
                    self.count_for_fleet();
                }
                _ = terminate.recv() => return Ok(()),
                _ = interrupt.recv() => return Ok(()),
            }
            self.policy_dirty |= self.mesh.take_peers_changed();
            if local_changed && self.local.synced() {
                self.read_catalog();
            }
            if (local_changed || self.policy_dirty) && self.local.synced() {
                self.reconcile_local(&identity_tx).await;
            }
            if self.local.synced() && (local_changed || self.mesh.take_services_changed()) {
                self.reconcile_services();
            }
            if let Some(arrived) = mesh_arrived {
                self.metrics
                    .sync_latency
                    .observe(arrived.elapsed().as_secs_f64());
            }
            self.check_ready();
        }
    }

    /// Applies one mesh event; true when local state must be looked at again.
    fn on_mesh(&mut self, event: MeshEvent) -> bool {
        let mut local_changed = false;
        let changes = match event {
            MeshEvent::Listing(values) => {
                self.metrics.mesh_listings.inc();
                self.metrics.etcd_connected.set(1);
                // etcd answers: what waits to retry need not wait longer.
                self.identities.retry_now();
                if let Some(session) = self.publisher.session() {
                    session.wake();
                }
                self.mesh_listed = true;
                let changes = self.mesh.replace(values);
                // Identities of ours whose master record vanished meanwhile.
                let lost: Vec<u32> = self
                    .identities
                    .ids()
                    .filter(|id| self.mesh.identity(*id).is_none())
                    .collect();
                for id in lost {
                    local_changed |= self.identities.forget(id);
                }
                changes
            }
            MeshEvent::Update(update) => {
                self.metrics.mesh_updates.inc();
                if let Update::Delete { key } = &update
                    && let Some(Key::Identity { cluster, id }) = keys::parse(key)
                    && cluster == self.config.cluster.name
                {
                    local_changed |= self.identities.forget(id);
                }
                self.mesh.apply(update)
            }
            MeshEvent::Disconnected => {
                self.metrics.etcd_connected.set(0);
                self.metrics.etcd_error("watch");
                Vec::new()
            }
        };
        self.ipcache
            .apply_mesh(changes, &mut self.datapath.maps, &self.metrics);
        local_changed
    }

    fn mesh_metrics(&mut self) {
        let metrics = &self.metrics;
        metrics
            .remote_clusters
            .set(self.mesh.accepted().count().saturating_sub(1) as i64);
        metrics
            .remote_endpoints
            .set(self.mesh.endpoint_count() as i64);
        metrics.remote_nodes.set(self.mesh.node_count() as i64);
        metrics.refused_clusters.clear();
        for cluster in self.mesh.refused().keys() {
            metrics
                .refused_clusters
                .get_or_create(&ClusterLabel {
                    cluster: cluster.clone(),
                })
                .set(1);
        }
        for (kind, count) in &self.mesh.counters.invalid {
            let seen = self.invalid_seen.entry(kind).or_default();
            metrics
                .invalid_records
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc_by(count - *seen);
            *seen = *count;
        }
        metrics.entries_rejected_up_to(&self.mesh.counters.rejected);
        if let Some(session) = self.publisher.session() {
            let written = session.bytes_written();
            let counted = metrics.etcd_bytes_written.get();
            metrics
                .etcd_bytes_written
                .inc_by(written.saturating_sub(counted));
        }
    }

    /// Brings the datapath, identities and published keys in line with the
    /// local source.
    async fn reconcile_local(&mut self, identity_tx: &mpsc::Sender<identities::Resolution>) {
        let (cluster, node) = (
            self.config.cluster.name.clone(),
            self.config.node.name.clone(),
        );
        let pods = self.local.local_pods(&node, &cluster);
        self.update_node_info();

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
        if self.policies.update(self.local.policies(), &cluster) {
            self.policy_dirty = true;
        }
        self.metrics.policies.set(self.policies.len() as i64);
        self.metrics
            .policies_invalid
            .set(self.policies.invalid() as i64);
        self.compile_policy(&pods);
        let identities = &self.identities;
        let identity_of = |pod: &LocalPod| identities.get(&pod.identity_labels);
        let assignments = &self.assignments;
        let policies = self.policies.policies().chain(self.fleet.policies.iter());
        let policy_of = |pod: &LocalPod| {
            assignments.get(&pod.ip).copied().unwrap_or_else(|| {
                // Not compiled yet: enforce with no entries (deny).
                let labels = PeerLabels::from_identity(&pod.identity_labels, &cluster);
                Assignment {
                    flags: compile::enforcement(policies.clone(), &labels),
                    policy_id: 0,
                }
            })
        };
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
        drop(policies);
        // Entries of peers not listed yet may still be in use (pinned maps
        // of a previous run): nothing is removed before the mesh is listed.
        if self.mesh_listed {
            self.policy
                .remove_unwanted(&mut self.datapath.maps, &self.metrics);
        }
        let identities = &self.identities;
        let identity_of = |pod: &LocalPod| identities.get(&pod.identity_labels);
        self.pod_names = pods
            .iter()
            .map(|(ip, pod)| {
                let name = (pod.namespace.clone(), pod.name.clone(), identity_of(pod));
                (*ip, name)
            })
            .collect();

        let mut local_layer = BTreeMap::new();
        let entry = |identity| IpcacheEntry {
            identity,
            tunnel_endpoint: [0; 4],
            cluster_id: self.config.cluster.id,
            flags: 0,
        };
        if let Some(info) = &self.node_info {
            for cidr in &info.pod_cidrs {
                local_layer.insert(*cidr, entry(identity::UNMANAGED));
            }
        }
        for (ip, pod) in &pods {
            let id = identity_of(pod).unwrap_or(identity::INIT);
            local_layer.insert(Ipv4Net::from(*ip), entry(id));
        }
        self.ipcache
            .set_local(local_layer, &mut self.datapath.maps, &self.metrics);
        if self.mesh_listed {
            self.ipcache.prune(&mut self.datapath.maps, &self.metrics);
        }

        // Publish once registered and the first identity round is done, so
        // the session never starts from a partial set of keys.
        if self.registered && (self.publisher.session().is_some() || self.identities.settled()) {
            let mut keys =
                publish::own_keys(&cluster, &node, self.node_info.as_ref(), &pods, identity_of);
            keys.extend(merge::exports(&self.catalog, &cluster, &node));
            keys.extend([self.fleet_report()]);
            let ttl = Duration::from_secs(self.config.etcd.lease_ttl_seconds);
            self.publisher
                .publish(keys, &self.client, &cluster, &node, ttl);
            self.start_identity_collection();
        }
    }

    /// When anything changed: compiles the policies for this node's pods
    /// (their groups, and the groups' entries), gives ipBlock prefixes their
    /// identities in the ipcache, and adds the policy map entries that are
    /// missing. Endpoints move to their groups, and unwanted entries are
    /// removed, after this.
    fn compile_policy(&mut self, pods: &BTreeMap<Ipv4Addr, LocalPod>) {
        if !self.policy_dirty {
            return;
        }
        self.policy_dirty = false;
        let started = Instant::now();
        let cluster = &self.config.cluster.name;
        let universe = &mut self.universe;
        universe.identities = self
            .mesh
            .identities()
            .map(|(id, owner, record)| (id, PeerLabels::from_identity(&record.labels, owner)))
            .collect();
        universe.named_ports = self.mesh.named_ports();
        let mut endpoints = Vec::new();
        for pod in pods.values() {
            let labels = PeerLabels::from_identity(&pod.identity_labels, cluster);
            if let Some(identity) = self.identities.get(&pod.identity_labels) {
                universe
                    .identities
                    .entry(identity)
                    .or_insert_with(|| labels.clone());
                let ports = universe.named_ports.entry(identity).or_default();
                for (name, port) in &pod.named_ports {
                    ports.entry(name.clone()).or_default().insert(*port);
                }
            }
            endpoints.push(LocalEndpoint {
                labels,
                named_ports: pod.named_ports.clone(),
                policy_id: self.endpoints.policy_id(pod.ip),
            });
        }
        let cidrs = self
            .policies
            .cidrs()
            .into_iter()
            .chain(self.fleet.policies.iter().flat_map(Policy::cidrs))
            .collect();
        let unassigned = universe.cidrs.sync(&cidrs);
        if unassigned > 0 {
            warn!(
                "{unassigned} ipBlock prefixes got no identity (all are in use); nothing selects them"
            );
        }
        self.ipcache.set_cidrs(
            universe.cidrs.ipcache(),
            &mut self.datapath.maps,
            &self.metrics,
        );
        let policies: Vec<&Policy> = self
            .policies
            .policies()
            .chain(self.fleet.policies.iter())
            .collect();
        let compiled = compile::compile(&policies, &endpoints, universe, &mut self.groups);
        self.assignments = pods.keys().copied().zip(compiled.assignments).collect();
        let entries = compiled.entries.len();
        self.policy.set_desired(compiled.entries);
        self.policy
            .add_missing(&mut self.datapath.maps, &self.metrics);
        debug!(
            pods = endpoints.len(),
            groups = self.groups.len(),
            identities = universe.identities.len(),
            entries,
            elapsed = ?started.elapsed(),
            "policy compiled"
        );
    }

    /// Reads this cluster's Services and EndpointSlices; warns once about
    /// each wrong annotation.
    fn read_catalog(&mut self) {
        let objects = self
            .local
            .objects(Kind::Service)
            .chain(self.local.objects(Kind::EndpointSlice));
        self.catalog = Catalog::from_objects(objects);
        for (name, service) in &self.catalog.services {
            if let Some(warning) = &service.warning
                && self.warned_services.insert(format!("{name} {warning}"))
            {
                warn!(service = %name, "{warning}; the service is treated as not global");
            }
        }
    }

    /// Programs every frontend from the catalog and the mesh's backends.
    fn reconcile_services(&mut self) {
        let mesh = &self.mesh;
        let desired = merge::frontends(&self.catalog, self.config.cluster.id, |name| {
            mesh.remote_backends(&name.namespace, &name.name)
        });
        self.services
            .program(&desired, &mut self.datapath.maps, &self.metrics);
        self.service_names = self
            .services
            .service_ids()
            .filter_map(|(key, id)| {
                let name = &desired.get(key)?.service;
                Some((id, format!("{}/{}", name.namespace, name.name)))
            })
            .collect();
    }

    /// This node's underlay IP and pod CIDRs: the config wins over the source.
    fn update_node_info(&mut self) {
        let from_source = self.local.node_info(&self.config.node.name);
        let ip = self
            .config
            .node
            .ip
            .or(from_source.as_ref().map(|info| info.ip));
        let pod_cidrs = match self.config.node.pod_cidr {
            Some(cidr) => vec![cidr],
            None => from_source.map(|info| info.pod_cidrs).unwrap_or_default(),
        };
        let info = ip
            .filter(|_| !pod_cidrs.is_empty())
            .map(|ip| NodeInfo { ip, pod_cidrs });
        if info.is_none() && !self.warned_no_node {
            self.warned_no_node = true;
            warn!(
                node = %self.config.node.name,
                "the source has no Node object with an InternalIP and pod CIDRs for this node; \
                 add one or set node.ip and node.pod-cidr (nothing is published until then)"
            );
        }
        if info != self.node_info {
            if let Some(info) = &info {
                info!(ip = %info.ip, pod_cidrs = ?info.pod_cidrs, "this node's address and pod CIDRs");
                self.node_config.node_ip = info.ip.octets();
                if let Err(error) = self.datapath.maps.set_node_config(self.node_config) {
                    error!("cannot update the node config map: {error}");
                }
            }
            self.node_info = info;
        }
    }

    fn start_identity_collection(&mut self) {
        if self.gc_started {
            return;
        }
        let Some(session) = self.publisher.session() else {
            return;
        };
        self.gc_started = true;
        let grace = Duration::from_secs(self.config.identities.gc_grace_seconds);
        let (mut client, cluster, status) = (
            self.client.clone(),
            self.config.cluster.name.clone(),
            session.status(),
        );
        tokio::spawn(async move {
            let mut collector = IdentityCollector::default();
            let mut retry = Retry::log_only("identity collection");
            loop {
                tokio::time::sleep(gc_interval(grace)).await;
                if !status.borrow().leader {
                    continue;
                }
                match collector.collect(&mut client, &cluster, grace).await {
                    Ok(_) => {
                        retry.succeeded();
                    }
                    Err(error) => {
                        retry.failed(&error);
                    }
                }
            }
        });
    }

    fn check_ready(&mut self) {
        let synced = self
            .publisher
            .session()
            .is_some_and(|s| s.status().borrow().synced);
        let ready = self.local.synced()
            && self.node_info.is_some()
            && self.mesh_listed
            && self.registered
            && synced;
        self.metrics.set_ready(ready);
        if ready && !self.ready {
            info!(
                cluster = %self.local_view.cluster,
                node = %self.local_view.node,
                pods = self.endpoints.attached().count(),
                remote_endpoints = self.mesh.endpoint_count(),
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
