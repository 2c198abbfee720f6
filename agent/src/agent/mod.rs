//! `fleetnet agent`: one node's agent. It loads the datapath, then runs one
//! loop ([`event_loop`]) over owned parts, each with a small API of its
//! own, reacting to its inputs:
//!
//! - the source (Kubernetes or a manifests directory): this node and its
//!   pods, which become endpoints in the datapath, local ipcache entries,
//!   identities ([`identities`]), and this node's keys in etcd; Services
//!   ([`services`]); NetworkPolicies, compiled against every cluster's
//!   identities into the policy map ([`policy`]);
//! - the mesh watch: what every other node of every cluster published,
//!   validated ([`mesh_view`]) and turned into ipcache changes;
//! - identity allocations finishing;
//! - the fleet revision this cluster targets
//!   ([`crate::rollout_follower`]);
//! - flow events from the datapath ([`observability`]);
//! - a one-second tick that retries pods waiting for their interface and
//!   refreshes the status.
//!
//! etcd being unreachable stops nothing local: the datapath keeps its last
//! state, pods on this node keep being attached, and everything is
//! published and reconciled once etcd is back.

mod event_loop;
mod identities;
mod memory;
mod mesh_view;
mod node;
mod observability;
mod policy;
mod services;

use std::sync::Arc;

use dataplane_common::{NodeConfig, maps as names};
use etcd_client::Client;
use fleetnet_store::{
    EtcdError, Retry,
    records::{self, ClusterRecord},
};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use self::{
    event_loop::Agent, identities::PodIdentities, mesh_view::MeshView, node::ThisNode,
    policy::PolicyEngine, services::ServiceEngine,
};
use crate::{
    api::{
        observe_listener,
        server::{self, Shared},
    },
    config::{AgentConfig, SourceSettings},
    daemonset::{self, DaemonSetUpdater},
    datapath::{
        Datapath, DatapathError, MapAccessError, MapSizes,
        bpffs::{self, BpffsError},
        netlink::{Netlink, NetlinkError},
        programmers::{
            endpoints::EndpointProgrammer, ipcache::IpcacheProgrammer, policy::PolicyProgrammer,
            services::ServiceProgrammer,
        },
    },
    mesh::{
        publish::Publisher,
        registration::{self, RegistrationError},
        state::{MeshState, Viewpoint},
        watcher,
    },
    metrics::Metrics,
    privileges::{self, MissingPrivileges},
    rollout_follower::{self, RolloutFollower},
    source::{self, kube::KubeError, manifests::ManifestsError, state::SourceState},
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
    #[error(
        "cluster {0} was retired from the fleet (fleetnet cluster retire): this agent stops and \
         does not register it again; join the cluster anew with fleetnet cluster join to bring it back"
    )]
    Retired(String),
    #[error(transparent)]
    ObserveListener(#[from] observe_listener::ListenError),
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
    if let (Ok(address), Some(files)) = (
        config.observe.relay_listen.parse(),
        config.observe.tls.as_ref(),
    ) {
        observe_listener::serve(address, files, shared.clone()).await?;
    }
    let netlink = Netlink::connect()?;
    // The source is checked before anything changes on the node.
    let (source_tx, source_rx) = mpsc::channel(4096);
    let daemonset = match &config.source {
        SourceSettings::Manifests { directory } => {
            let config_directory = directory.clone();
            source::manifests::ManifestDir::new(directory)?;
            let directory = directory.clone();
            tokio::spawn(async move {
                if let Err(error) = source::manifests::run(directory, source_tx).await {
                    error!("manifests source stopped: {error}");
                }
            });
            daemonset::Target::Manifests {
                directory: config_directory.clone(),
                daemonset: config.daemonset.clone(),
            }
        }
        SourceSettings::Kube { kubeconfig } => {
            let client = source::kube::client(kubeconfig.as_deref()).await?;
            tokio::spawn(source::kube::run(
                client.clone(),
                config.node.name.clone(),
                source_tx,
            ));
            daemonset::Target::Kube {
                client,
                daemonset: config.daemonset.clone(),
            }
        }
    };

    // So are the etcd credentials: refused ones stop the agent here. A
    // login etcd does not answer within seconds goes on in the background.
    let credentials = config.etcd_credentials();
    let client = fleetnet_store::connect_as(
        &config.etcd.endpoints,
        config.etcd.tls.as_ref(),
        credentials.as_ref(),
    )
    .await?;

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
        // Known once the node's address is (the uplink holding it).
        path_mtu: 0,
        underlay_mtu: 0,
    };
    datapath.maps.set_node_config(node_config)?;
    datapath.attach(names::PROG_FROM_OVERLAY, &tunnel.name, tunnel.index)?;
    let (observability, flows_rx) = observability::start(&config, &pin_dir, sizes, shared);
    let viewpoint = Viewpoint {
        cluster: config.cluster.name.clone(),
        cluster_id: config.cluster.id,
        pod_cidrs: config.cluster.pod_cidrs.clone(),
        node: config.node.name.clone(),
        routing: config.routing.mode,
        routing_peers: config.routing.peers.clone(),
    };

    let (mesh_tx, mesh_rx) = mpsc::channel(16384);
    tokio::spawn(watcher::run(
        client.clone(),
        config.cluster.name.clone(),
        mesh_tx,
    ));
    let (fleet_tx, fleet_rx) = mpsc::channel(16);
    tokio::spawn(rollout_follower::run(
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
        source: SourceState::default(),
        node: ThisNode::new(node_config),
        mesh: MeshView::new(MeshState::new(viewpoint)),
        identities: PodIdentities::default(),
        endpoints: EndpointProgrammer::new(datapath.maps.endpoints()?),
        ipcache: IpcacheProgrammer::new(datapath.maps.ipcache()?),
        policy: PolicyEngine::new(PolicyProgrammer::new(datapath.maps.policy()?)),
        services: ServiceEngine::new(ServiceProgrammer::new(
            datapath.maps.services()?,
            datapath.maps.backends()?,
            config.services.maglev_table_size,
            config.services.max_services,
        )),
        publisher: Publisher::default(),
        daemonset: DaemonSetUpdater::new(daemonset),
        rollout: RolloutFollower::new(fleetnet_fleet::model::AgentRunning {
            image: config.image.clone(),
            settings: config.restart_settings(),
        }),
        observability,
        registered: false,
        ready: false,
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
    let record = ClusterRecord {
        v: records::VERSION,
        id: config.cluster.id,
        pod_cidrs: config.cluster.pod_cidrs.clone(),
        labels: config.cluster.labels.clone(),
        routing: config.routing.mode,
        routing_peers: config.routing.peers.clone(),
    };
    let mut retry = Retry::new("cluster registration");
    loop {
        match registration::register_record(&mut client, &config.cluster.name, &record).await {
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
