//! This node as the datapath and the mesh know it: its underlay address
//! and pod CIDRs (the config wins over the source's Node object), and the
//! node settings the programs read from their one-entry map.

use dataplane_common::NodeConfig;
use tracing::{error, info, warn};

use crate::{
    config::NodeSettings,
    datapath::DatapathMaps,
    source::state::{NodeInfo, SourceState},
};

pub(super) struct ThisNode {
    /// What the programs read (`NODE_CONFIG`).
    datapath: NodeConfig,
    info: Option<NodeInfo>,
    warned_unknown: bool,
}

impl ThisNode {
    pub(super) fn new(datapath: NodeConfig) -> Self {
        Self {
            datapath,
            info: None,
            warned_unknown: false,
        }
    }

    /// The address and pod CIDRs published, once known.
    pub(super) fn info(&self) -> Option<&NodeInfo> {
        self.info.as_ref()
    }

    /// Reads this node's underlay IP and pod CIDRs: the settings win over
    /// the source. Warns once while neither says; rewrites the node config
    /// map when the address changes.
    pub(super) fn update(
        &mut self,
        settings: &NodeSettings,
        source: &SourceState,
        maps: &mut DatapathMaps,
    ) {
        let from_source = source.node_info(&settings.name);
        let ip = settings.ip.or(from_source.as_ref().map(|info| info.ip));
        let pod_cidrs = match settings.pod_cidr {
            Some(cidr) => vec![cidr],
            None => from_source.map(|info| info.pod_cidrs).unwrap_or_default(),
        };
        let info = ip
            .filter(|_| !pod_cidrs.is_empty())
            .map(|ip| NodeInfo { ip, pod_cidrs });
        if info.is_none() && !self.warned_unknown {
            self.warned_unknown = true;
            warn!(
                node = %settings.name,
                "the source has no Node object with an InternalIP and pod CIDRs for this node; \
                 add one or set node.ip and node.pod-cidr (nothing is published until then)"
            );
        }
        if info != self.info {
            if let Some(info) = &info {
                info!(ip = %info.ip, pod_cidrs = ?info.pod_cidrs, "this node's address and pod CIDRs");
                self.datapath.node_ip = info.ip.octets();
                if let Err(error) = maps.set_node_config(self.datapath) {
                    error!("cannot update the node config map: {error}");
                }
            }
            self.info = info;
        }
    }

    /// One forwarded packet in `every` becomes a flow event.
    pub(super) fn set_forward_sample(&mut self, every: u16, maps: &mut DatapathMaps) {
        if self.datapath.forward_sample != every {
            self.datapath.forward_sample = every;
            if let Err(error) = maps.set_node_config(self.datapath) {
                warn!("cannot update the node config map: {error}");
            }
        }
    }
}
