//! This node as the datapath and the mesh know it: its underlay address
//! and pod CIDRs (the config wins over the source's Node object), and the
//! node settings the programs read from their one-entry map.

use std::net::Ipv4Addr;

use dataplane_common::NodeConfig;
use tracing::{error, info, warn};

use crate::{
    config::{NodeSettings, TunnelSettings},
    datapath::{DatapathMaps, VXLAN_OVERHEAD, netlink::Netlink},
    source::state::{NodeInfo, SourceState},
};

pub(super) struct ThisNode {
    /// What the programs read (`NODE_CONFIG`).
    datapath: NodeConfig,
    info: Option<NodeInfo>,
    warned_unknown: bool,
    /// The address the path MTU was found for.
    path_mtu_of: Option<Ipv4Addr>,
    warned_no_uplink: bool,
}

impl ThisNode {
    pub(super) fn new(datapath: NodeConfig) -> Self {
        Self {
            datapath,
            info: None,
            warned_unknown: false,
            path_mtu_of: None,
            warned_no_uplink: false,
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

    /// Finds the largest packet a pod may send to another node, once this
    /// node's address is known (and again when it changes): the underlay's
    /// MTU (`tunnel.underlay-mtu`, or the MTU of the interface holding the
    /// address) less the tunnel's overhead. Returns it when it changed.
    pub(super) async fn find_path_mtu(
        &mut self,
        settings: &TunnelSettings,
        netlink: &Netlink,
        maps: &mut DatapathMaps,
    ) -> Option<u16> {
        let ip = self.info.as_ref()?.ip;
        if self.path_mtu_of == Some(ip) {
            return None;
        }
        let underlay = match settings.underlay_mtu {
            Some(mtu) => u32::from(mtu),
            None => match netlink.link_with_address(ip).await {
                Ok(Some(uplink)) => uplink.mtu,
                Ok(None) => {
                    if !self.warned_no_uplink {
                        self.warned_no_uplink = true;
                        warn!(
                            %ip,
                            "no interface holds this node's address, so the underlay's MTU is \
                             unknown and pods' packets are not held to it; set tunnel.underlay-mtu"
                        );
                    }
                    return None;
                }
                Err(error) => {
                    warn!("cannot read the underlay's MTU: {error}");
                    return None;
                }
            },
        };
        self.path_mtu_of = Some(ip);
        let mtu = u16::try_from(underlay)
            .unwrap_or(u16::MAX)
            .saturating_sub(VXLAN_OVERHEAD);
        if self.datapath.path_mtu != mtu {
            info!(
                underlay_mtu = underlay,
                path_mtu = mtu,
                "packets to other nodes fit {mtu} bytes"
            );
            self.datapath.path_mtu = mtu;
            if let Err(error) = maps.set_node_config(self.datapath) {
                warn!("cannot update the node config map: {error}");
            }
        }
        Some(mtu)
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
