//! The networks users would run instead of fleetnet, built on a fleet in a
//! box whose agents are never started, for the benchmarks to measure side
//! by side with fleetnet:
//!
//! - [`flannel`]: a plain kernel VXLAN overlay the way Flannel's vxlan
//!   backend builds it. One `flannel.1` device per node (VNI 1, port 8472,
//!   no learning), and per remote node a route to its pod /24 via its
//!   `flannel.1` address, a permanent neighbour entry and an FDB entry to
//!   its underlay IP. No BPF anywhere.
//! - [`kube_proxy_rules`]: the nat-table chains kube-proxy's iptables mode
//!   writes for ClusterIP services (KUBE-SERVICES → KUBE-SVC-* →
//!   KUBE-SEP-*, the statistic match spreading over backends, the
//!   masquerade marks), loaded with `iptables-restore` by [`load_iptables`].
//!   Rule comments are left out, as kube-proxy does in large clusters.

use std::{
    fmt::Write,
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
};

use crate::{
    fleet_in_a_box::{FleetInABox, Node},
    netns::run,
};

/// Flannel's VXLAN port on Linux.
pub const FLANNEL_PORT: u16 = 8472;
const DEVICE: &str = "flannel.1";
/// The cluster CIDR kube-proxy is told (`--cluster-cidr`).
const CLUSTER_CIDR: &str = "10.0.0.0/8";

/// Builds the Flannel-style overlay between every node of `fleet`.
pub fn flannel(fleet: &FleetInABox) -> io::Result<()> {
    for node in &fleet.nodes {
        node.netns.ip(&format!(
            "link add {DEVICE} address {} type vxlan id 1 local {} dev eth0 dstport {FLANNEL_PORT} nolearning",
            vtep_mac(node),
            node.ip
        ))?;
        node.netns
            .ip(&format!("addr add {}/32 dev {DEVICE}", vtep_ip(node)))?;
        node.netns.ip(&format!("link set {DEVICE} mtu 1450 up"))?;
    }
    for node in &fleet.nodes {
        for remote in fleet.nodes.iter().filter(|other| other.id != node.id) {
            let (ip, mac) = (vtep_ip(remote), vtep_mac(remote));
            node.netns.ip(&format!(
                "route add {} via {ip} dev {DEVICE} onlink",
                remote.pod_cidr
            ))?;
            node.netns.ip(&format!(
                "neigh add {ip} lladdr {mac} dev {DEVICE} nud permanent"
            ))?;
            run(node.netns.command("bridge")?.args([
                "fdb",
                "append",
                &mac,
                "dev",
                DEVICE,
                "dst",
                &remote.ip.to_string(),
            ]))?;
        }
    }
    Ok(())
}

/// The address Flannel gives a node's `flannel.1`: its pod range's first.
fn vtep_ip(node: &Node) -> Ipv4Addr {
    node.pod_cidr.network()
}

fn vtep_mac(node: &Node) -> String {
    let [_, _, c, n] = node.ip.octets();
    format!("0e:fa:00:00:{c:02x}:{n:02x}")
}

/// A ClusterIP service as kube-proxy sees it.
pub struct ClusterIpService {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub backends: Vec<SocketAddrV4>,
}

/// The `iptables-restore` input kube-proxy's iptables mode would write for
/// `services`, in that order in KUBE-SERVICES (each packet of a new
/// connection walks that chain until its service's rule matches).
pub fn kube_proxy_rules(services: &[ClusterIpService]) -> String {
    let mut chains = String::from(
        ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut portals = String::new();
    let mut rules = String::new();
    for (index, service) in services.iter().enumerate() {
        let svc = format!("KUBE-SVC-{index:016X}");
        let (vip, port) = (service.vip, service.port);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            portals,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port} -j {svc}"
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s {CLUSTER_CIDR} -d {vip}/32 -p tcp -m tcp --dport {port} -j KUBE-MARK-MASQ"
        );
        let count = service.backends.len();
        for (position, backend) in service.backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{index:08X}{position:08X}");
            let _ = writeln!(chains, ":{sep} - [0:0]");
            // Backend i of n is taken with probability 1/(n-i), so each
            // gets 1/n; the last one unconditionally.
            let remaining = count - position;
            if remaining > 1 {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / remaining as f64
                );
            } else {
                let _ = writeln!(rules, "-A {svc} -j {sep}");
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {}/32 -j KUBE-MARK-MASQ\n\
                 -A {sep} -p tcp -m tcp -j DNAT --to-destination {backend}",
                backend.ip()
            );
        }
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n{chains}\
         -A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n\
         -A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
         {portals}-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         {rules}COMMIT\n"
    )
}

/// Replaces `node`'s nat table with `rules` (iptables-restore input) in one
/// transaction, as kube-proxy does on each sync.
pub fn load_iptables(node: &Node, rules: &str) -> io::Result<()> {
    let mut child = node
        .netns
        .command("iptables-restore")?
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            io::Error::other(format!(
                "cannot run iptables-restore ({error}); `cargo xtask setup` installs iptables"
            ))
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())?;
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "iptables-restore in {} failed: {}",
            node.id,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_share_a_service_evenly() {
        let service = ClusterIpService {
            vip: Ipv4Addr::new(172, 20, 0, 1),
            port: 80,
            backends: (1..=3)
                .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, i), 8080))
                .collect(),
        };
        let rules = kube_proxy_rules(&[service]);
        assert!(rules.contains("--probability 0.3333333333 -j KUBE-SEP-0000000000000000"));
        assert!(rules.contains("--probability 0.5000000000 -j KUBE-SEP-0000000000000001"));
        assert!(rules.contains("-A KUBE-SVC-0000000000000000 -j KUBE-SEP-0000000000000002"));
        assert!(rules.contains("-j DNAT --to-destination 10.1.1.3:8080"));
        // The node-port jump stays the last rule of KUBE-SERVICES.
        let portal = rules.find("-A KUBE-SERVICES -d 172.20.0.1/32").unwrap();
        let nodeports = rules.find("-j KUBE-NODEPORTS").unwrap();
        assert!(portal < nodeports);
    }
}
