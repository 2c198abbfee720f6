//! This node as the datapath and the mesh know it: its underlay address
//! and pod CIDRs (the config wins over the source's Node object), and the
//! node settings the programs read from their one-entry map.

use std::net::Ipv4Addr;

use dataplane_common::NodeConfig;
use tracing::{error, info, warn};

use crate::{
    config::{NodeSettings, RoutingSettings},
    datapath::{
        DatapathMaps, VXLAN_OVERHEAD,
        netlink::{Link, Netlink},
    },
    source::state::{NodeInfo, SourceState},
};

/// The network between nodes, as this node reaches it.
pub(super) struct Underlay {
    /// The interface holding this node's address, if one does.
    pub uplink: Option<Link>,
    /// The largest packet it carries.
    pub mtu: u16,
    /// The largest packet a pod may tunnel through it.
    pub path_mtu: u16,
}

pub(super) struct ThisNode {
    /// What the programs read (`NODE_CONFIG`).
    datapath: NodeConfig,
    info: Option<NodeInfo>,
    warned_unknown: bool,
    /// The address the underlay was found for.
    underlay_of: Option<Ipv4Addr>,
    warned_no_uplink: bool,
}

impl ThisNode {
    pub(super) fn new(datapath: NodeConfig) -> Self {
        Self {
            datapath,
            info: None,
            warned_unknown: false,
            underlay_of: None,
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

    /// Finds the underlay, once this node's address is known (and again
    /// when it changes): the interface holding the address (the uplink,
    /// where natively routed packets arrive) and the underlay's MTU
    /// (`routing.underlay-mtu`, or the uplink's). Pods' packets are held
    /// to that MTU when routed natively, to it less the tunnel's overhead
    /// when tunnelled. Returns what was found when it changed.
    pub(super) async fn find_underlay(
        &mut self,
        settings: &RoutingSettings,
        netlink: &Netlink,
        maps: &mut DatapathMaps,
    ) -> Option<Underlay> {
        let ip = self.info.as_ref()?.ip;
        if self.underlay_of == Some(ip) {
            return None;
        }
        let uplink = match netlink.link_with_address(ip).await {
            Ok(uplink) => uplink,
            Err(error) => {
                warn!("cannot find the interface holding this node's address: {error}");
                return None;
            }
        };
        let Some(mtu) = settings
            .underlay_mtu
            .map(u32::from)
            .or(uplink.as_ref().map(|link| link.mtu))
        else {
            if !self.warned_no_uplink {
                self.warned_no_uplink = true;
                warn!(
                    %ip,
                    "no interface holds this node's address, so the underlay's MTU is unknown \
                     and pods' packets are not held to it; set routing.underlay-mtu"
                );
            }
            return None;
        };
        self.underlay_of = Some(ip);
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        #[cfg(feature = "test-builds")]
        let mtu = mtu.saturating_sub(crate::test_build::path_mtu_shrink());
        let underlay = Underlay {
            uplink,
            mtu,
            path_mtu: mtu.saturating_sub(VXLAN_OVERHEAD),
        };
        if (self.datapath.underlay_mtu, self.datapath.path_mtu) != (mtu, underlay.path_mtu) {
            info!(
                underlay_mtu = mtu,
                tunnelled = underlay.path_mtu,
                "packets to other nodes fit {mtu} bytes natively, {} tunnelled",
                underlay.path_mtu
            );
            self.datapath.underlay_mtu = mtu;
            self.datapath.path_mtu = underlay.path_mtu;
            if let Err(error) = maps.set_node_config(self.datapath) {
                warn!("cannot update the node config map: {error}");
            }
        }
        Some(underlay)
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
