//! What the agent asks the kernel about the node's network over rtnetlink:
//! interfaces (index, MAC, veth peer), the /32 routes a CNI installs for its
//! pods, and the VXLAN collect_md device it creates.

use std::{collections::BTreeMap, net::Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan,
    packet_route::{
        AddressFamily,
        address::AddressMessage,
        link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("netlink request to {what} failed: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("interface {0} does not exist on this node")]
    NoSuchInterface(String),
    #[error(
        "interface {0} exists but is not a VXLAN collect_md (external) device; \
         delete it or set tunnel.device to another name"
    )]
    NotCollectMd(String),
    #[error("pod {pod}: the interface its /32 route points at is gone")]
    NoPodRoute { pod: String },
    #[error(
        "pod {pod}: interface {interface} is not one end of a veth pair with the other end \
         in the pod's network namespace"
    )]
    NotAVethPair { pod: String, interface: String },
}

/// One network interface as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// For a veth: the peer's index and the id of the namespace it lives in.
    pub peer: Option<(u32, i32)>,
    pub kind: Option<InfoKind>,
    pub mtu: u32,
    collect_metadata: bool,
}

#[cfg(test)]
impl Link {
    pub fn for_tests(index: u32, name: &str, mac: [u8; 6]) -> Self {
        Self {
            index,
            name: name.into(),
            mac,
            peer: None,
            kind: None,
            mtu: 1500,
            collect_metadata: false,
        }
    }
}

/// A pod's veth pair, seen from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub host: Link,
    /// MAC of the pod's own end, read from inside its namespace.
    pub pod_mac: [u8; 6],
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a rtnetlink socket in the current network namespace. Must run
    /// inside a tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let request = self.handle.link().get().match_name(name);
        first_link(request.execute(), &format!("look up interface {name}")).await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let request = self.handle.link().get().match_index(index);
        first_link(request.execute(), &format!("look up interface #{index}")).await
    }

    /// The interface holding `address` (the node's underlay address: its
    /// uplink), if any does.
    pub async fn link_with_address(&self, address: Ipv4Addr) -> Result<Option<Link>, NetlinkError> {
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_address_filter(address.into())
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("find the interface with address {address}"),
                source,
            })?;
        match addresses.first() {
            Some(message) => self.link_by_index(message.header.index).await,
            None => Ok(None),
        }
    }

    /// The node's /32 routes (as veth-based CNIs install for their pods):
    /// address -> interface index.
    pub async fn host_routes(&self) -> Result<BTreeMap<Ipv4Addr, u32>, NetlinkError> {
        let mut dump = RouteMessage::default();
        dump.header.address_family = AddressFamily::Inet;
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Request {
                what: "list routes".into(),
                source,
            })?;
        Ok(routes
            .iter()
            .filter(|route| route.header.destination_prefix_length == 32)
            .filter_map(|route| {
                let destination =
                    route
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            RouteAttribute::Destination(RouteAddress::Inet(address)) => {
                                Some(*address)
                            }
                            _ => None,
                        })?;
                let interface = route
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        RouteAttribute::Oif(index) => Some(*index),
                        _ => None,
                    })?;
                Some((destination, interface))
            })
            .collect())
    }

    /// The veth pair behind interface `index`, the node end of a pod's
    /// link, with the pod end's MAC read from inside the pod's namespace
    /// (the way Cilium's chaining mode finds interfaces another CNI made).
    pub async fn pod_interface(&self, pod: &str, index: u32) -> Result<PodInterface, NetlinkError> {
        let host = self
            .link_by_index(index)
            .await?
            .ok_or_else(|| NetlinkError::NoPodRoute { pod: pod.into() })?;
        let not_veth = || NetlinkError::NotAVethPair {
            pod: pod.into(),
            interface: host.name.clone(),
        };
        let (peer_index, peer_netns) = host.peer.ok_or_else(not_veth)?;
        let mut request = self.handle.link().get().match_index(peer_index);
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::IfNetnsId(peer_netns));
        let peer = first_link(
            request.execute(),
            &format!("look up the peer of {}", host.name),
        )
        .await?
        .ok_or_else(not_veth)?;
        Ok(PodInterface {
            pod_mac: peer.mac,
            host,
        })
    }

    /// Returns the VXLAN collect_md device `name`, creating it when missing.
    pub async fn ensure_vxlan(&self, name: &str, port: u16) -> Result<Link, NetlinkError> {
        if let Some(link) = self.link_by_name(name).await? {
            if link.kind == Some(InfoKind::Vxlan) && link.collect_metadata {
                self.set_up(&link).await?;
                return Ok(link);
            }
            return Err(NetlinkError::NotCollectMd(name.into()));
        }
        let message = LinkMessageBuilder::<LinkVxlan>::new(name)
            .collect_metadata(true)
            .port(port)
            .learning(false)
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("create VXLAN device {name}"),
                source,
            })?;
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchInterface(name.into()))
    }

    async fn set_up(&self, link: &Link) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(link.index).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("set {} up", link.name),
                source,
            })
    }
}

async fn first_link(
    mut links: impl futures_util::Stream<Item = Result<LinkMessage, rtnetlink::Error>> + Unpin,
    what: &str,
) -> Result<Option<Link>, NetlinkError> {
    match links.try_next().await {
        Ok(message) => Ok(message.map(|message| parse_link(&message))),
        // ENODEV: no such interface.
        Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENODEV => Ok(None),
        Err(source) => Err(NetlinkError::Request {
            what: what.into(),
            source,
        }),
    }
}

fn parse_link(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: [0; 6],
        peer: None,
        kind: None,
        mtu: 0,
        collect_metadata: false,
    };
    let mut peer_index = None;
    let mut peer_netns = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(bytes) if bytes.len() == 6 => link.mac.copy_from_slice(bytes),
            LinkAttribute::Link(index) => peer_index = Some(*index),
            LinkAttribute::LinkNetNsId(id) => peer_netns = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.clone()),
                        LinkInfo::Data(InfoData::Vxlan(vxlan)) => {
                            link.collect_metadata = vxlan
                                .iter()
                                .any(|nla| matches!(nla, InfoVxlan::CollectMetadata(true)));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if link.kind == Some(InfoKind::Veth) {
        link.peer = peer_index.zip(peer_netns);
    }
    link
}
