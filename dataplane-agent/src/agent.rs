//! `fleetnet agent`: bring the node's datapath up from the configuration,
//! serve until SIGTERM, then detach cleanly.

use dataplane_common::maps as names;
use tracing::info;

use crate::{
    bpffs::{self, BpffsError},
    config::AgentConfig,
    datapath::{Datapath, DatapathError, MapAccessError, MapSizes},
    desired,
    netlink::{Netlink, NetlinkError},
    privileges::{self, MissingPrivileges},
};

#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Leave maps pinned on shutdown so the next agent reuses their state.
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
    #[error("cannot listen for termination signals: {0}")]
    Signals(std::io::Error),
}

pub async fn run(config: AgentConfig, options: RunOptions) -> Result<(), AgentError> {
    privileges::check()?;
    let netlink = Netlink::connect()?;

    // Find every pod's interface before changing anything, so a missing one
    // leaves the node as it was.
    let mut pods = Vec::with_capacity(config.pods.len());
    for pod in &config.pods {
        let interface = netlink.pod_interface(&pod.to_string(), pod.ip).await?;
        pods.push((pod.clone(), interface));
    }
    let tunnel = netlink
        .ensure_vxlan(&config.tunnel.device, config.tunnel.port)
        .await?;

    let pin_dir = config.pin_dir();
    bpffs::ensure(&config.bpf.root, &pin_dir)?;
    let sizes = MapSizes {
        ipcache: config.bpf.ipcache_max_entries,
        endpoints: config.bpf.endpoints_max_entries,
        metrics: config.bpf.metrics_max_entries,
    };
    let mut datapath = Datapath::load(sizes, Some(&pin_dir))?;
    // Maps first, programs second: a program never runs on half a state.
    datapath
        .maps
        .set_node_config(desired::node_config(&config, tunnel.index))?;
    datapath
        .maps
        .reconcile_ipcache(&desired::ipcache(&config))?;
    datapath
        .maps
        .reconcile_endpoints(&desired::endpoints(&pods))?;
    for (_, interface) in &pods {
        datapath.attach(names::PROG_FROM_POD, &interface.host.name)?;
    }
    datapath.attach(names::PROG_FROM_OVERLAY, &tunnel.name)?;
    info!(
        cluster = %config.cluster.name,
        node = %config.node.name,
        pods = pods.len(),
        peers = config.peers.len(),
        pin_dir = %pin_dir.display(),
        "fleetnet agent ready"
    );

    wait_for_termination().await?;
    if options.keep_pins {
        info!("detaching; maps stay pinned for the next agent");
        drop(datapath);
    } else {
        info!("detaching and removing pinned maps");
        datapath.unpin()?;
    }
    Ok(())
}

async fn wait_for_termination() -> Result<(), AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
