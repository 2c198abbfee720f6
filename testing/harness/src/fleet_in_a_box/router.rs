//! The routed underlay: a router on the underlay's segment that holds every
//! node's pod CIDR as a route, as a cloud's route table (or BGP) does, so
//! clusters routed natively reach each other's pods unencapsulated. Nodes
//! send every pod address that is not their own to it.

use std::{io, net::Ipv4Addr};

use super::*;

/// The router's address on the underlay.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Every cluster's pod CIDR lies inside.
const POD_SUPERNET: &str = "10.0.0.0/8";

impl FleetInABox {
    /// Builds the router's namespace on the underlay. It forwards without
    /// ICMP redirects: nodes share its segment, and a redirect would send
    /// them around it.
    pub(super) fn add_router(&mut self) -> io::Result<()> {
        let netns = Netns::create(&format!("{}-router", self.name))?;
        self.join_underlay(&netns, "router", ROUTER_IP, Some([0x02, 0x18, 0, 0, 0, 1]))?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        for scope in ["all", "default", "eth0"] {
            netns.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
        }
        self.router = Some(netns);
        Ok(())
    }

    /// Adds `node`'s pod CIDR to the router's table, and the router as
    /// `node`'s way to every other pod.
    pub(super) fn route_node(&self, node: &Node) -> io::Result<()> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        router.ip(&format!("route add {} via {}", node.pod_cidr, node.ip))?;
        node.netns
            .ip(&format!("route add {POD_SUPERNET} via {ROUTER_IP}"))?;
        node.netns.sysctl("net.ipv4.conf.all.accept_redirects", "0")
    }

    /// The router's namespace, when the underlay is routed.
    pub fn router(&self) -> Option<&Netns> {
        self.router.as_ref()
    }
}
