//! Pods: the harness plays kubelet and CNI, setting up a pod's network
//! before writing its manifest, and hosts joining the underlay.

use std::{collections::BTreeMap, fs, io, net::Ipv4Addr, time::Instant};

use super::{
    manifests::{pod_yaml, write_atomically},
    *,
};

impl FleetInABox {
    /// Adds a pod to node `node_id` (`cC/nN`): its network first, then its
    /// Pod manifest, as kubelet and the CNI would. Returns its id.
    pub fn add_pod(&mut self, node_id: &str) -> io::Result<String> {
        self.add_pod_at(node_id).map(|(id, _)| id)
    }

    /// [`FleetInABox::add_pod`], also returning when the manifest was written.
    pub fn add_pod_at(&mut self, node_id: &str) -> io::Result<(String, Instant)> {
        let node_index = self.node_index(node_id);
        let node = &self.nodes[node_index];
        let p = (1..=200u8)
            .find(|p| !node.pods.iter().any(|pod| pod.name == format!("p{p}")))
            .ok_or_else(|| io::Error::other("node is full"))?;
        let (c, n) = (node.cluster_id as u8, node.pod_cidr.network().octets()[2]);
        let ip = Ipv4Addr::new(10, c, n, 10 + p);
        let netns = Netns::create(&format!("{}-c{c}n{n}p{p}", self.name))?;
        let pod_mac = [0x02, 0xaa, c, n, p, 0];
        let gateway_mac = [0x02, 0xfe, c, n, p, 0];
        let host_interface = format!("lxc{p}");
        let (pod_mac_text, gateway) = (mac(pod_mac), mac(gateway_mac));
        netns.ip(&format!(
            "link add eth0 address {pod_mac_text} netns {} type veth \
             peer name {host_interface} address {gateway} netns {}",
            netns.name(),
            node.netns.name()
        ))?;
        netns.ip(&format!("addr add {ip}/32 dev eth0"))?;
        let mtu = self.spec.pod_mtu;
        netns.ip(&format!("link set eth0 mtu {mtu} up"))?;
        netns.ip(&format!("route add {POD_GATEWAY} dev eth0 scope link"))?;
        netns.ip(&format!("route add default via {POD_GATEWAY} dev eth0"))?;
        netns.ip(&format!(
            "neigh add {POD_GATEWAY} lladdr {gateway} dev eth0 nud permanent"
        ))?;
        node.netns
            .ip(&format!("link set {host_interface} mtu {mtu} up"))?;
        node.netns.ip(&format!(
            "route add {ip}/32 dev {host_interface} scope link"
        ))?;
        let pod = Pod {
            id: format!("c{c}/n{n}/p{p}"),
            name: format!("p{p}"),
            ip,
            mac: pod_mac,
            gateway_mac,
            host_interface,
            labels: BTreeMap::from([("app".to_string(), format!("p{p}"))]),
            netns,
        };
        write_atomically(&node.pod_manifest(&pod.name), &pod_yaml(node, &pod))?;
        let written = Instant::now();
        let id = pod.id.clone();
        self.nodes[node_index].pods.push(pod);
        Ok((id, written))
    }

    /// Deletes a pod: its manifest first, then its network. Returns when
    /// the manifest was removed.
    pub fn remove_pod(&mut self, pod_id: &str) -> io::Result<Instant> {
        let node_index = self
            .nodes
            .iter()
            .position(|node| node.pods.iter().any(|pod| pod.id == pod_id))
            .unwrap_or_else(|| panic!("no pod {pod_id}"));
        let node = &mut self.nodes[node_index];
        let index = node
            .pods
            .iter()
            .position(|pod| pod.id == pod_id)
            .expect("found above");
        let pod = node.pods.remove(index);
        fs::remove_file(node.pod_manifest(&pod.name))?;
        let removed = Instant::now();
        node.netns.ip(&format!("route del {}/32", pod.ip))?;
        // The namespace goes away asynchronously, its veth with it; deleting
        // the veth now frees the name for the next pod at once.
        node.netns.ip(&format!("link del {}", pod.host_interface))?;
        drop(pod);
        Ok(removed)
    }

    /// Replaces a pod's labels (its manifest is rewritten); returns when.
    pub fn set_pod_labels(&mut self, pod_id: &str, labels: &[(&str, &str)]) -> io::Result<Instant> {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.pods.iter().any(|pod| pod.id == pod_id))
            .unwrap_or_else(|| panic!("no pod {pod_id}"));
        let index = node
            .pods
            .iter()
            .position(|pod| pod.id == pod_id)
            .expect("found above");
        node.pods[index].labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pod = &node.pods[index];
        let (path, yaml) = (node.pod_manifest(&pod.name), pod_yaml(node, pod));
        write_atomically(&path, &yaml)?;
        Ok(Instant::now())
    }

    /// A plain host on the underlay (no agent): an intruder, or a client.
    pub fn add_underlay_host(&self, label: &str, ip: Ipv4Addr) -> io::Result<Netns> {
        let netns = Netns::create(&format!("{}-{label}", self.name))?;
        self.join_underlay(&netns, label, ip, None)?;
        Ok(netns)
    }

    /// Gives `netns` an `eth0` with `ip`/15 whose other end, `port`, is on
    /// the underlay bridge.
    pub(super) fn join_underlay(
        &self,
        netns: &Netns,
        port: &str,
        ip: Ipv4Addr,
        address: Option<[u8; 6]>,
    ) -> io::Result<()> {
        join_underlay(&self.underlay, netns, port, ip, address)
    }
}

/// Gives `netns` an `eth0` with `ip`/15 whose other end, `port`, is on
/// `underlay`'s bridge.
pub(super) fn join_underlay(
    underlay: &Netns,
    netns: &Netns,
    port: &str,
    ip: Ipv4Addr,
    address: Option<[u8; 6]>,
) -> io::Result<()> {
    let address = address
        .map(|bytes| format!("address {}", mac(bytes)))
        .unwrap_or_default();
    netns.ip(&format!(
        "link add eth0 {address} netns {} type veth peer name {port} netns {}",
        netns.name(),
        underlay.name()
    ))?;
    underlay.ip(&format!("link set {port} master br0 up"))?;
    netns.ip(&format!("addr add {ip}/15 dev eth0"))?;
    netns.ip("link set eth0 up")?;
    Ok(())
}

fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FleetInABox {
    /// Sends `count` UDP datagrams from pod `from` to pod `to`'s `port`
    /// (pod ids `cC/nN/pP`), each saying its number.
    pub fn send_datagrams(&self, from: &str, to: &str, port: u16, count: u64) -> io::Result<()> {
        let (source, destination) = (self.pod(from), self.pod(to));
        let socket = crate::probe::udp_socket(
            &source.netns,
            std::net::SocketAddr::from((source.ip, 0)),
            std::time::Duration::from_secs(1),
        )?;
        for i in 0..count {
            socket.send_to(format!("datagram {i}").as_bytes(), (destination.ip, port))?;
        }
        Ok(())
    }
}
