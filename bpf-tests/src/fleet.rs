//! Fleet in a box: clusters of nodes of pods, all network namespaces on
//! one machine, with one real `fleetnet agent` process per node and one
//! real etcd as the shared mesh keyspace.
//!
//! - an underlay namespace with bridge `br0` (198.18.0.2/15), where etcd
//!   listens; or, with [`FleetSpec::etcd_members`] above 1, one namespace
//!   per etcd member bridged to the underlay at 198.18.0.(2+M)/15, so a
//!   member can be killed or cut off alone. Node `cC nN` has underlay IP
//!   198.18.C.(10+N)/15 on its `eth0`;
//! - with [`FleetSpec::etcd_auth`], etcd requires a login: a root user for
//!   the harness, and per cluster a user whose role
//!   ([`dataplane_agent::mesh::keys::cluster_role`]) writes only that
//!   cluster's keys; each cluster's agents get only their own;
//! - cluster `cC` owns pod CIDR 10.C.0.0/16; its node `nN` owns 10.C.N.0/24
//!   and runs its own agent with its own pin directory;
//! - each cluster has a manifests directory (its "API server"): a
//!   Namespace, its Node objects, and one Pod file per pod. The agents are
//!   given only etcd, their cluster's name, id and CIDR, their node name
//!   and that directory;
//! - pod `pP` on a node has 10.C.N.(10+P)/32 on a veth whose node end is
//!   `lxcP`. The harness plays kubelet and CNI: it sets up the pod's
//!   network (default route via 169.254.1.1 with a static neighbour entry,
//!   a /32 route on the node, which is how the agent finds the veth), then
//!   writes the Pod with its `status.podIP`.
//!
//! Nothing is added to the root namespace. Dropping the fleet stops the
//! agents and etcd and deletes every namespace and pin directory, also on
//! panic.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use dataplane_agent::datapath::DatapathMaps;
use dataplane_common::{IpKey, IpcacheEntry, ServiceKey, service::PROTO_TCP};
use ipnet::Ipv4Net;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    etcd::Etcd,
    netns::{self, Netns},
};

/// Every harness namespace and pin directory starts with this and the pid.
const NAME_PREFIX: &str = "fn";
const BPF_DIR: &str = "/sys/fs/bpf/fleetnet";
/// Gateway address every pod routes through (as in Cilium's and Calico's
/// link-local gateways).
pub const POD_GATEWAY: &str = "169.254.1.1";
pub const POD_MTU: &str = "1450";
pub const VXLAN_PORT: u16 = 4789;
/// Where etcd listens on the underlay.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const METRICS_PORT: u16 = 9962;
/// Service port and backend (target) port of the services tests write.
pub const SERVICE_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
const READY_LINE: &str = "fleetnet agent ready";

#[derive(Debug, Clone, Copy)]
pub struct FleetSpec {
    pub clusters: u16,
    pub nodes_per_cluster: u16,
    pub pods_per_node: u16,
    /// How long a dead agent's keys outlive it.
    pub lease_ttl_seconds: u64,
    /// Labels of cluster `c` (1-based) as a YAML flow map, e.g.
    /// `{ env: prod }`: what rollout stages select.
    pub cluster_labels: fn(u16) -> String,
    /// `bpf.ipcache-max-entries` of every agent.
    pub ipcache_max_entries: u32,
    /// `services.max-services` of every agent.
    pub max_services: u32,
    /// `observe.forward-sample` of every agent: 1 (every forwarded packet
    /// an event) for tests, the default 100 for benchmarks.
    pub forward_sample: u32,
    /// etcd members: 1 (in the underlay namespace, at [`ETCD_IP`]), or a
    /// cluster of that many, each in its own namespace at
    /// [`etcd_member_ip`]; agents get every member's endpoint.
    pub etcd_members: u16,
    /// etcd with authentication enabled: a root user (the harness's), and
    /// one user per cluster (`fleetnet-cC`) with a role that reads the mesh
    /// and writes only that cluster's keys; agents log in as theirs.
    pub etcd_auth: bool,
}

impl FleetSpec {
    pub const fn new(clusters: u16, nodes_per_cluster: u16, pods_per_node: u16) -> Self {
        Self {
            clusters,
            nodes_per_cluster,
            pods_per_node,
            lease_ttl_seconds: 5,
            cluster_labels: |_| "{}".to_string(),
            ipcache_max_entries: 16384,
            max_services: 1023,
            forward_sample: 1,
            etcd_members: 1,
            etcd_auth: false,
        }
    }
}

pub struct Pod {
    /// `cC/nN/pP`
    pub id: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// MAC of the node end of the pod's veth.
    pub gateway_mac: [u8; 6],
    /// Name of the node end of the veth, inside the node's namespace.
    pub host_interface: String,
    /// Its labels (`app: pP` until changed).
    pub labels: BTreeMap<String, String>,
    pub netns: Netns,
}

pub struct Node {
    /// `cC/nN`
    pub id: String,
    pub cluster: String,
    pub cluster_id: u16,
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub pods: Vec<Pod>,
    pub netns: Netns,
    pub config_path: PathBuf,
    pub pin_dir: PathBuf,
    pub log_path: PathBuf,
    manifests: PathBuf,
    agent: Mutex<Option<Child>>,
    /// Length of the log when the agent was last started.
    log_offset: Mutex<usize>,
}

pub struct Fleet {
    pub name: String,
    pub spec: FleetSpec,
    pub workdir: PathBuf,
    pub nodes: Vec<Node>,
    /// The etcd, or the first member of the etcd cluster.
    pub etcd: Etcd,
    /// The other members of the etcd cluster (none with one member).
    pub etcd_peers: Vec<Etcd>,
    /// The members' namespaces (none with one member, which runs in the
    /// underlay's).
    etcd_netns: Vec<Netns>,
    /// The harness's root login when etcd has authentication enabled.
    etcd_root: Option<String>,
    pub underlay: Netns,
}

/// Where etcd member `m` (1-based) of a multi-member fleet listens.
pub fn etcd_member_ip(m: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 2 + m as u8)
}

/// The etcd user of cluster `cluster` (1-based) in a fleet with
/// [`FleetSpec::etcd_auth`].
pub fn etcd_user(cluster: u16) -> String {
    format!("fleetnet-c{cluster}")
}

static NAMES: AtomicU32 = AtomicU32::new(0);

impl Fleet {
    /// Builds the namespaces, etcd, the clusters' manifests and each node's
    /// agent config. Agents are started by [`Fleet::start_agents`].
    pub fn build(spec: FleetSpec) -> io::Result<Self> {
        crate::require_root();
        let kept = kept_fleet_name();
        netns::sweep_stale(NAME_PREFIX, kept.as_deref());
        sweep_stale_pins(kept.as_deref());
        let name = unique_name();
        let workdir = std::env::temp_dir().join(format!("fleetnet-{name}"));
        fs::create_dir_all(&workdir)?;
        let underlay = Netns::create(&format!("{name}-underlay"))?;
        underlay.ip("link add br0 type bridge")?;
        underlay.ip(&format!("addr add {ETCD_IP}/15 dev br0"))?;
        underlay.ip("link set br0 up")?;
        let (etcd, etcd_peers, etcd_netns) = if spec.etcd_members <= 1 {
            (Etcd::start_in(&underlay, ETCD_IP)?, Vec::new(), Vec::new())
        } else {
            let mut namespaces = Vec::new();
            for m in 1..=spec.etcd_members {
                let netns = Netns::create(&format!("{name}-etcd{m}"))?;
                join_underlay(
                    &underlay,
                    &netns,
                    &format!("etcd{m}"),
                    etcd_member_ip(m),
                    None,
                )?;
                namespaces.push(netns);
            }
            let members: Vec<(&Netns, Ipv4Addr)> = namespaces
                .iter()
                .zip(1..)
                .map(|(netns, m)| (netns, etcd_member_ip(m)))
                .collect();
            let mut etcds = Etcd::start_cluster(&members)?;
            let first = etcds.remove(0);
            (first, etcds, namespaces)
        };
        let mut fleet = Self {
            name,
            spec,
            workdir,
            nodes: Vec::new(),
            etcd,
            etcd_peers,
            etcd_netns,
            etcd_root: None,
            underlay,
        };
        if spec.etcd_auth {
            fleet.enable_etcd_auth()?;
        }
        for cluster in 1..=spec.clusters {
            let manifests = fleet.manifests_dir(cluster);
            fs::create_dir_all(&manifests)?;
            fs::write(
                manifests.join("namespace.yaml"),
                "apiVersion: v1\nkind: Namespace\nmetadata: { name: default, labels: { env: test } }\n",
            )?;
            for index in 1..=spec.nodes_per_cluster {
                let node = fleet.add_node(cluster, index)?;
                fs::write(&node.config_path, fleet.agent_config(&node))?;
                fs::write(
                    manifests.join(format!("node-{}.yaml", node.name)),
                    node_yaml(&node),
                )?;
                fleet.nodes.push(node);
            }
        }
        for node in 0..fleet.nodes.len() {
            for _ in 0..spec.pods_per_node {
                let id = fleet.nodes[node].id.clone();
                fleet.add_pod(&id)?;
            }
        }
        Ok(fleet)
    }

    fn manifests_dir(&self, cluster: u16) -> PathBuf {
        self.workdir.join("clusters").join(format!("c{cluster}"))
    }

    fn add_node(&self, cluster: u16, index: u16) -> io::Result<Node> {
        let (c, n) = (cluster as u8, index as u8);
        let label = format!("c{c}n{n}");
        let netns = Netns::create(&format!("{}-{label}", self.name))?;
        let ip = Ipv4Addr::new(198, 18, c, 10 + n);
        self.join_underlay(&netns, &label, ip, Some([0x02, 0x18, c, n, 0, 1]))?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(Node {
            id: format!("c{c}/n{n}"),
            cluster: format!("c{c}"),
            cluster_id: cluster,
            name: format!("n{n}"),
            ip,
            pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, c, n, 0), 24).expect("valid prefix"),
            pods: Vec::new(),
            config_path: self.workdir.join(format!("{label}.yaml")),
            pin_dir: Path::new(BPF_DIR).join(format!("{}-{label}", self.name)),
            log_path: self.workdir.join(format!("{label}.log")),
            manifests: self.manifests_dir(cluster),
            netns,
            agent: Mutex::new(None),
            log_offset: Mutex::new(0),
        })
    }

    /// Adds a pod to node `node_id` (`cC/nN`): its network first, then its
    /// Pod manifest, as kubelet and the CNI would. Returns its id.
    pub fn add_pod(&mut self, node_id: &str) -> io::Result<String> {
        self.add_pod_at(node_id).map(|(id, _)| id)
    }

    /// [`Fleet::add_pod`], also returning when the manifest was written.
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
        netns.ip(&format!("link set eth0 mtu {POD_MTU} up"))?;
        netns.ip(&format!("route add {POD_GATEWAY} dev eth0 scope link"))?;
        netns.ip(&format!("route add default via {POD_GATEWAY} dev eth0"))?;
        netns.ip(&format!(
            "neigh add {POD_GATEWAY} lladdr {gateway} dev eth0 nud permanent"
        ))?;
        node.netns
            .ip(&format!("link set {host_interface} mtu {POD_MTU} up"))?;
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

    /// Writes (or replaces) NetworkPolicy `name` in namespace `default` of
    /// `cluster`, with `spec` as YAML (flow style); returns when.
    pub fn write_policy(&self, cluster: u16, name: &str, spec: &str) -> io::Result<Instant> {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{ name: {name}, namespace: default }}\nspec: {spec}\n"
        );
        write_atomically(&self.policy_path(cluster, name), &yaml)?;
        Ok(Instant::now())
    }

    /// Deletes NetworkPolicy `name` of `cluster`; returns when.
    pub fn delete_policy(&self, cluster: u16, name: &str) -> io::Result<Instant> {
        fs::remove_file(self.policy_path(cluster, name))?;
        Ok(Instant::now())
    }

    fn policy_path(&self, cluster: u16, name: &str) -> PathBuf {
        self.manifests_dir(cluster)
            .join(format!("networkpolicy-{name}.yaml"))
    }

    /// Writes (or replaces) Service `name` of `cluster`: ClusterIP `vip`,
    /// port 80 named `http` to target port 8080, with `annotations`.
    pub fn write_service(
        &self,
        cluster: u16,
        name: &str,
        vip: Ipv4Addr,
        annotations: &[(&str, &str)],
    ) -> io::Result<()> {
        write_atomically(
            &self
                .manifests_dir(cluster)
                .join(format!("service-{name}.yaml")),
            &service_yaml(name, vip, annotations),
        )
    }

    /// Writes (or replaces) the EndpointSlice of Service `name` in
    /// `cluster`: each pod (by id) with its readiness.
    pub fn write_endpoints(
        &self,
        cluster: u16,
        name: &str,
        pods: &[(&str, bool)],
    ) -> io::Result<()> {
        let endpoints: Vec<(Ipv4Addr, &str, bool)> = pods
            .iter()
            .map(|(id, ready)| {
                let (node, pod) = self
                    .pods()
                    .find(|(_, pod)| pod.id == *id)
                    .unwrap_or_else(|| panic!("no pod {id}"));
                (pod.ip, node.name.as_str(), *ready)
            })
            .collect();
        let yaml = endpoint_slice_yaml(name, &endpoints);
        write_atomically(
            &self
                .manifests_dir(cluster)
                .join(format!("endpoints-{name}.yaml")),
            &yaml,
        )
    }

    /// The agent config of `node`: only etcd, its cluster and its source.
    fn agent_config(&self, node: &Node) -> String {
        let login = if self.spec.etcd_auth {
            format!(
                ", username: {}, password-file: '{}'",
                etcd_user(node.cluster_id),
                self.etcd_password_file(&etcd_user(node.cluster_id))
                    .display()
            )
        } else {
            String::new()
        };
        format!(
            "cluster: {{ name: {}, id: {}, pod-cidrs: [10.{}.0.0/16], labels: {} }}\n\
             node: {{ name: {} }}\n\
             etcd: {{ endpoints: [{}], lease-ttl-seconds: {}{login} }}\n\
             source: {{ kind: manifests, directory: {} }}\n\
             identities: {{ gc-grace-seconds: 10 }}\n\
             metrics: {{ listen: '{}:{METRICS_PORT}' }}\n\
             observe: {{ forward-sample: {} }}\n\
             services: {{ max-services: {} }}\n\
             bpf: {{ pin-dir: {}, ipcache-max-entries: {}, endpoints-max-entries: 1024, metrics-max-entries: 4096 }}\n",
            node.cluster,
            node.cluster_id,
            node.cluster_id,
            (self.spec.cluster_labels)(node.cluster_id),
            node.name,
            self.etcd_endpoints()
                .iter()
                .map(|endpoint| format!("'{endpoint}'"))
                .collect::<Vec<_>>()
                .join(", "),
            self.spec.lease_ttl_seconds,
            node.manifests.display(),
            node.ip,
            self.spec.forward_sample,
            self.spec.max_services,
            node.pin_dir.display(),
            self.spec.ipcache_max_entries
        )
    }

    /// Writes `yaml` as manifest `file` of `cluster` (atomically).
    pub fn write_manifest(&self, cluster: u16, file: &str, yaml: &str) -> io::Result<()> {
        write_atomically(&self.manifests_dir(cluster).join(file), yaml)
    }

    /// A plain host on the underlay (no agent): an intruder, or a client.
    pub fn add_underlay_host(&self, label: &str, ip: Ipv4Addr) -> io::Result<Netns> {
        let netns = Netns::create(&format!("{}-{label}", self.name))?;
        self.join_underlay(&netns, label, ip, None)?;
        Ok(netns)
    }

    /// Gives `netns` an `eth0` with `ip`/15 whose other end, `port`, is on
    /// the underlay bridge.
    fn join_underlay(
        &self,
        netns: &Netns,
        port: &str,
        ip: Ipv4Addr,
        address: Option<[u8; 6]>,
    ) -> io::Result<()> {
        join_underlay(&self.underlay, netns, port, ip, address)
    }

    pub fn pods(&self) -> impl Iterator<Item = (&Node, &Pod)> {
        self.nodes
            .iter()
            .flat_map(|node| node.pods.iter().map(move |pod| (node, pod)))
    }

    pub fn pod(&self, id: &str) -> &Pod {
        self.pods()
            .map(|(_, pod)| pod)
            .find(|pod| pod.id == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    pub fn node(&self, id: &str) -> &Node {
        &self.nodes[self.node_index(id)]
    }

    fn node_index(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Starts every node's agent and waits until each says it is ready.
    pub fn start_agents(&self) -> io::Result<()> {
        let binary = agent_binary();
        for node in &self.nodes {
            node.start_agent(&binary)?;
        }
        for node in &self.nodes {
            node.wait_ready(Duration::from_secs(60))?;
        }
        Ok(())
    }

    /// Stops every agent with SIGTERM; fails if one does not exit cleanly.
    pub fn stop_agents(&self) -> io::Result<()> {
        let mut failures = Vec::new();
        for node in &self.nodes {
            if let Err(error) = node.stop_agent() {
                failures.push(error.to_string());
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(failures.join("; ")))
        }
    }

    /// The ipcache entry every pod should have on `node`'s map: its own
    /// pods local, every other pod behind its node's underlay IP.
    pub fn expected_ipcache(&self, node: &Node) -> BTreeMap<Ipv4Net, ([u8; 4], u16)> {
        self.pods()
            .map(|(host, pod)| {
                let tunnel = if host.id == node.id {
                    [0; 4]
                } else {
                    host.ip.octets()
                };
                (Ipv4Net::from(pod.ip), (tunnel, host.cluster_id))
            })
            .collect()
    }

    /// Pods (by /32) missing or wrong in `node`'s ipcache, and /32 entries
    /// it holds for pods that do not exist.
    pub fn ipcache_mismatches(&self, node: &Node) -> Vec<String> {
        let expected = self.expected_ipcache(node);
        let actual: BTreeMap<Ipv4Net, IpcacheEntry> = node
            .maps()
            .ipcache()
            .unwrap_or_default()
            .into_iter()
            .filter(|(cidr, _)| cidr.prefix_len() == 32)
            .collect();
        let mut problems = Vec::new();
        for (cidr, (tunnel, cluster)) in &expected {
            match actual.get(cidr) {
                Some(entry) if entry.tunnel_endpoint == *tunnel && entry.cluster_id == *cluster => {
                }
                other => problems.push(format!("{}: {cidr} is {other:?}", node.id)),
            }
        }
        for cidr in actual.keys().filter(|cidr| !expected.contains_key(cidr)) {
            problems.push(format!("{}: stale entry {cidr}", node.id));
        }
        problems
    }

    /// Waits until every node's ipcache holds exactly the fleet's pods.
    pub fn wait_converged(&self, timeout: Duration) -> io::Result<Duration> {
        let started = Instant::now();
        loop {
            let problems: Vec<String> = self
                .nodes
                .iter()
                .flat_map(|node| self.ipcache_mismatches(node))
                .collect();
            if problems.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(io::Error::other(format!(
                    "not converged after {timeout:?}:\n{}",
                    problems.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Keys under `prefix` in the fleet's etcd (read with etcdctl from the
    /// underlay).
    pub fn etcd_keys(&self, prefix: &str) -> io::Result<Vec<String>> {
        let output = self.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Writes a key directly into the fleet's etcd, as a rogue or broken
    /// member could.
    pub fn etcd_put(&self, key: &str, value: &str) -> io::Result<()> {
        self.etcdctl(&["put", key, value]).map(|_| ())
    }

    /// `etcdctl <args>` against every member, from the underlay, logged in
    /// as root when etcd requires a login; fails with its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<std::process::Output> {
        let root = self
            .etcd_root
            .as_ref()
            .map(|password| format!("root:{password}"));
        netns::run(&mut self.etcdctl_as(root.as_deref(), args)?)
    }

    /// An `etcdctl <args>` command against every member, from the
    /// underlay, logged in as `user` (`name:password`) if given.
    pub fn etcdctl_as(
        &self,
        user: Option<&str>,
        args: &[&str],
    ) -> io::Result<std::process::Command> {
        self.etcdctl_command(&self.etcd_endpoints().join(","), user, args)
    }

    /// `etcdctl <args>` against etcd member `index` (0-based) alone, as
    /// root if etcd requires a login; fails with its stderr.
    pub fn etcdctl_on(&self, index: usize, args: &[&str]) -> io::Result<std::process::Output> {
        let member = self.etcd_members().nth(index).expect("no such etcd member");
        let root = self
            .etcd_root
            .as_ref()
            .map(|password| format!("root:{password}"));
        netns::run(&mut self.etcdctl_command(&member.endpoint(), root.as_deref(), args)?)
    }

    fn etcdctl_command(
        &self,
        endpoints: &str,
        user: Option<&str>,
        args: &[&str],
    ) -> io::Result<std::process::Command> {
        let mut command = self.underlay.command("etcdctl")?;
        command
            .args(["--endpoints", endpoints])
            .args(["--dial-timeout=2s", "--command-timeout=10s"])
            .args(user.map(|user| format!("--user={user}")))
            .args(args)
            .env("ETCDCTL_API", "3");
        Ok(command)
    }

    /// Client URLs of every etcd member.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd_members().map(Etcd::endpoint).collect()
    }

    /// Every etcd member, the first ([`Fleet::etcd`]) first.
    pub fn etcd_members(&self) -> impl Iterator<Item = &Etcd> {
        std::iter::once(&self.etcd).chain(&self.etcd_peers)
    }

    /// etcd member `index` (0-based: 0 is [`Fleet::etcd`]).
    pub fn etcd_member_mut(&mut self, index: usize) -> &mut Etcd {
        match index {
            0 => &mut self.etcd,
            _ => &mut self.etcd_peers[index - 1],
        }
    }

    /// The index of the member that leads the etcd cluster now, asked of
    /// every member that answers.
    pub fn etcd_leader(&self) -> io::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        let root = self
            .etcd_root
            .as_ref()
            .map(|password| format!("root:{password}"));
        for etcd in self.etcd_members() {
            let output = self
                .etcdctl_command(
                    &etcd.endpoint(),
                    root.as_deref(),
                    &["endpoint", "status", "-w", "json"],
                )?
                .output()?;
            let status: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            let status = &status[0]["Status"];
            ids.push(status["header"]["member_id"].as_u64());
            if let Some(id) = status["leader"].as_u64().filter(|id| *id != 0) {
                leader = Some(id);
            }
        }
        let leader = leader.ok_or_else(|| io::Error::other("no etcd member reports a leader"))?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .ok_or_else(|| io::Error::other(format!("the etcd leader {leader:x} did not answer")))
    }

    /// Cuts etcd member `index` (0-based) off the underlay (its bridge port
    /// down: neither peers nor clients reach it, and nothing tells them),
    /// or joins it again. Needs a multi-member fleet.
    pub fn cut_etcd_member(&self, index: usize, cut: bool) -> io::Result<()> {
        assert!(
            !self.etcd_netns.is_empty(),
            "cutting an etcd member off needs FleetSpec::etcd_members > 1"
        );
        let state = if cut { "down" } else { "up" };
        self.underlay
            .ip(&format!("link set etcd{} {state}", index + 1))
            .map(|_| ())
    }

    /// Cuts etcd member `index` (0-based) off from its peers only (routes
    /// between it and each of them blackholed on both ends), so that it
    /// loses its leader while clients still reach it; or lets it talk to
    /// them again.
    pub fn isolate_etcd_member(&self, index: usize, isolate: bool) -> io::Result<()> {
        assert!(
            index < self.etcd_netns.len(),
            "isolating an etcd member needs FleetSpec::etcd_members > 1"
        );
        let verb = if isolate { "add" } else { "del" };
        let ip = |i: usize| etcd_member_ip(i as u16 + 1);
        for peer in (0..self.etcd_netns.len()).filter(|peer| *peer != index) {
            self.etcd_netns[index].ip(&format!("route {verb} blackhole {}/32", ip(peer)))?;
            self.etcd_netns[peer].ip(&format!("route {verb} blackhole {}/32", ip(index)))?;
        }
        Ok(())
    }

    /// etcd's current revision.
    pub fn etcd_revision(&self) -> io::Result<i64> {
        let output = self.etcdctl(&["get", "--limit=1", "-w", "json", "/"])?;
        let response: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(io::Error::other)?;
        response["header"]["revision"]
            .as_i64()
            .ok_or_else(|| io::Error::other("etcdctl get printed no revision"))
    }

    /// Compacts etcd's history up to now: a watch from before is told it
    /// fell behind.
    pub fn etcd_compact(&self) -> io::Result<i64> {
        let revision = self.etcd_revision()?;
        self.etcdctl(&["compact", &revision.to_string()])?;
        Ok(revision)
    }

    /// Where the password of etcd user `user` is kept.
    pub fn etcd_password_file(&self, user: &str) -> PathBuf {
        self.workdir.join(format!("etcd-{user}.password"))
    }

    /// `name:password` of cluster `cluster`'s etcd user.
    pub fn etcd_login(&self, cluster: u16) -> io::Result<String> {
        let user = etcd_user(cluster);
        let password = fs::read_to_string(self.etcd_password_file(&user))?;
        Ok(format!("{user}:{}", password.trim_end()))
    }

    /// Turns on etcd's authentication: root, then a user and role per
    /// cluster ([`dataplane_agent::mesh::keys::cluster_role`], as the
    /// README's recipe does it with etcdctl), then `auth enable`.
    fn enable_etcd_auth(&mut self) -> io::Result<()> {
        let password = |user: &str| -> io::Result<String> {
            let password = format!("{user}-{}", unique_name());
            fs::write(self.etcd_password_file(user), format!("{password}\n"))?;
            Ok(password)
        };
        let root = password("root")?;
        self.etcdctl(&["user", "add", "root", "--new-user-password", &root])?;
        for cluster in 1..=self.spec.clusters {
            let user = etcd_user(cluster);
            let secret = password(&user)?;
            self.etcdctl(&["user", "add", &user, "--new-user-password", &secret])?;
            self.etcdctl(&["role", "add", &user])?;
            for grant in dataplane_agent::mesh::keys::cluster_role(&format!("c{cluster}"), cluster)
            {
                let command = grant.etcdctl(&user);
                let args: Vec<&str> = command.split_whitespace().skip(1).collect();
                self.etcdctl(&args)?;
            }
            self.etcdctl(&["user", "grant-role", &user, &user])?;
        }
        self.etcdctl(&["auth", "enable"])?;
        self.etcd_root = Some(root);
        Ok(())
    }

    /// Leaves the fleet running after this process exits (`demo --keep`):
    /// records what [`Fleet::tear_down_kept`] must remove, and returns how
    /// to look around.
    pub fn keep_running(self) -> io::Result<String> {
        let mut state = format!("name {}\nworkdir {}\n", self.name, self.workdir.display());
        for node in &self.nodes {
            if let Some(child) = node.agent.lock().unwrap().as_ref() {
                state += &format!("pid {}\n", child.id());
            }
        }
        for etcd in self.etcd_members() {
            if let Some(pid) = etcd.pid() {
                state += &format!("pid {pid}\netcd-data {}\n", etcd.data_dir().display());
            }
        }
        fs::write(kept_state_path(), state)?;
        let (_, pod) = self.pods().last().expect("a fleet has pods");
        let first = &self.nodes[0].pods[0];
        let notes = format!(
            "==> the fleet keeps running (agent logs and manifests in {}). Try:\n    \
             ip netns exec {} ping -c 3 {}   # {} -> {}\n    \
             ip netns exec {} etcdctl --endpoints {} get --prefix /fleetnet/v1/nodes\n\
             Remove it with `cargo xtask demo --down`.",
            self.workdir.display(),
            first.netns.name(),
            pod.ip,
            first.id,
            pod.id,
            self.underlay.name(),
            self.etcd.endpoint(),
        );
        // Nothing may be cleaned up now: no Drop for the fleet, its
        // namespaces, etcd or its agent handles.
        std::mem::forget(self);
        Ok(notes)
    }

    /// Removes a fleet left running by [`Fleet::keep_running`].
    pub fn tear_down_kept() -> io::Result<String> {
        let path = kept_state_path();
        let state = fs::read_to_string(&path).map_err(|_| {
            io::Error::other("no demo fleet is running (nothing was kept with --keep)")
        })?;
        let mut name = None;
        for line in state.lines() {
            match line.split_once(' ') {
                Some(("name", value)) => name = Some(value.to_string()),
                Some(("workdir" | "etcd-data", value)) => {
                    let _ = fs::remove_dir_all(value);
                }
                Some(("pid", value)) => {
                    if let Ok(pid) = value.parse::<i32>() {
                        stop_process(Pid::from_raw(pid));
                    }
                }
                _ => {}
            }
        }
        let name =
            name.ok_or_else(|| io::Error::other(format!("{} names no fleet", path.display())))?;
        let prefix = format!("{name}-");
        let mut removed = 0;
        for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let netns = entry.file_name().to_string_lossy().into_owned();
            if netns.starts_with(&prefix) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &netns])
                    .output();
                removed += 1;
            }
        }
        for entry in fs::read_dir(BPF_DIR).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = remove_pins(&entry.path());
            }
        }
        fs::remove_file(&path)?;
        Ok(format!("==> fleet {name} removed ({removed} namespaces)"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = node.stop_agent();
            let _ = remove_pins(&node.pin_dir);
        }
        if std::thread::panicking() {
            eprintln!(
                "fleet {}: agent configs, logs and manifests kept in {}",
                self.name,
                self.workdir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.workdir);
        }
    }
}

impl Node {
    fn pod_manifest(&self, pod: &str) -> PathBuf {
        self.manifests.join(format!("pod-{}-{pod}.yaml", self.name))
    }

    /// Where the agent serves metrics, status and flows (in the node's
    /// namespace).
    pub fn metrics_address(&self) -> SocketAddr {
        SocketAddr::from((self.ip, METRICS_PORT))
    }

    /// The body of the agent's `/metrics`.
    pub fn metrics_text(&self) -> io::Result<String> {
        http_get(&self.netns, self.metrics_address(), "/metrics")
    }

    /// The value of the metric line starting with `series` (name and
    /// labels exactly as exposed), if present.
    pub fn metric(&self, series: &str) -> io::Result<Option<f64>> {
        Ok(metric_value(&self.metrics_text()?, series))
    }

    /// `fleetnet observe -o json <filters>` against this node's agent: the
    /// flows it prints.
    pub fn observe(
        &self,
        filters: &[&str],
    ) -> io::Result<Vec<dataplane_agent::observe::flows::FlowRecord>> {
        let mut args = vec!["observe", "-o", "json", "--last", "100000"];
        args.extend_from_slice(filters);
        let output = self.fleetnet(&args)?;
        if !output.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).map_err(io::Error::other))
            .collect()
    }

    /// `fleetnet <args> --server <this node's agent>`, run inside the node's
    /// namespace.
    pub fn fleetnet(&self, args: &[&str]) -> io::Result<std::process::Output> {
        self.netns
            .command(agent_binary())?
            .args(args)
            .arg("--server")
            .arg(self.metrics_address().to_string())
            .output()
    }

    pub fn start_agent(&self, binary: &Path) -> io::Result<()> {
        self.start_agent_with(binary, &[])
    }

    /// [`Node::start_agent`] with extra arguments (`--keep-pins`).
    pub fn start_agent_with(&self, binary: &Path, extra: &[&str]) -> io::Result<()> {
        *self.log_offset.lock().unwrap() = self.log().len();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = self
            .netns
            .command(binary)?
            .args(["agent", "--config"])
            .arg(&self.config_path)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        *self.agent.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Waits for the agent's ready line written after the last start.
    pub fn wait_ready(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        // Restarts append to the same log: only this run's lines count.
        let offset = *self.log_offset.lock().unwrap();
        loop {
            if self
                .log()
                .get(offset..)
                .is_some_and(|run| run.contains(READY_LINE))
            {
                return Ok(());
            }
            let exited = match self.agent.lock().unwrap().as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.agent.lock().unwrap().take();
                return Err(io::Error::other(format!(
                    "agent of {} exited ({status}) before it was ready; its log:\n{}",
                    self.id,
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "agent of {} not ready after {timeout:?}; its log:\n{}",
                    self.id,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after 10 s; an unclean exit is an error.
    pub fn stop_agent(&self) -> io::Result<()> {
        let Some(child) = self.agent.lock().unwrap().take() else {
            return Ok(());
        };
        terminate(child, &format!("agent of {}", self.id), || self.log())
    }

    /// Kills the agent (SIGKILL): no cleanup, its keys live on until its
    /// lease expires, its pinned maps stay.
    pub fn kill_agent(&self) {
        if let Some(mut child) = self.agent.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.lock().unwrap().as_ref().map(Child::id)
    }

    pub fn agent_running(&self) -> bool {
        self.agent
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The first line of the agent's log telling of a lost lease (its keys
    /// would have left the mesh) or an error.
    pub fn log_trouble(&self) -> Option<String> {
        self.log()
            .lines()
            .find(|line| line.contains("lease expired") || line.contains("ERROR"))
            .map(str::to_string)
    }

    /// Panics, naming the node and the line, if [`Node::log_trouble`]
    /// finds one.
    pub fn assert_untroubled(&self) {
        if let Some(line) = self.log_trouble() {
            panic!("{}: {line}", self.id);
        }
    }

    /// The maps this node's agent pinned.
    pub fn maps(&self) -> DatapathMaps {
        DatapathMaps::open_pinned(&self.pin_dir)
            .unwrap_or_else(|error| panic!("opening {}'s pinned maps: {error}", self.id))
    }

    /// The ready backends this node's datapath has for `vip`, port
    /// SERVICE_PORT/TCP (None: no such frontend).
    pub fn backend_count(&self, vip: Ipv4Addr) -> Option<u16> {
        let key = ServiceKey {
            vip: IpKey::v4(vip.octets()),
            port: SERVICE_PORT.to_be(),
            protocol: PROTO_TCP,
            _pad: 0,
        };
        let services = self
            .maps()
            .services()
            .unwrap_or_else(|error| panic!("reading {}'s services: {error}", self.id));
        services.get(&key).map(|info| info.backend_count)
    }
}

/// Service `name` in namespace default: ClusterIP `vip`, port 80 named
/// `http` to target port 8080, with `annotations`.
pub fn service_yaml(name: &str, vip: Ipv4Addr, annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}: '{v}'"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\n\
         metadata: {{ name: {name}, namespace: default, annotations: {{ {} }} }}\n\
         spec: {{ clusterIP: {vip}, ports: [ {{ name: http, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT} }} ] }}\n",
        annotations.join(", ")
    )
}

/// The EndpointSlice of Service `name`: each endpoint's address, node
/// name and readiness.
pub fn endpoint_slice_yaml(name: &str, endpoints: &[(Ipv4Addr, &str, bool)]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(ip, node, ready)| {
            format!(
                "  - {{ addresses: [{ip}], conditions: {{ ready: {ready} }}, nodeName: {node} }}\n"
            )
        })
        .collect();
    let endpoints = if endpoints.is_empty() {
        " []\n".to_string()
    } else {
        format!("\n{}", endpoints.concat())
    };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{ name: {name}-fleet, namespace: default, labels: {{ kubernetes.io/service-name: {name} }} }}\n\
         addressType: IPv4\nports: [ {{ name: http, port: {BACKEND_PORT}, protocol: TCP }} ]\nendpoints:{endpoints}"
    )
}

fn node_yaml(node: &Node) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{ name: {} }}\n\
         spec: {{ podCIDRs: [{}] }}\n\
         status: {{ addresses: [ {{ type: InternalIP, address: {} }} ] }}\n",
        node.name, node.pod_cidr, node.ip
    )
}

/// A pod's manifest; its container names port `http` (the backend port).
fn pod_yaml(node: &Node, pod: &Pod) -> String {
    let labels: Vec<String> = pod
        .labels
        .iter()
        .map(|(k, v)| format!("{k}: '{v}'"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\n\
         metadata: {{ name: {}-{}, namespace: default, labels: {{ {} }} }}\n\
         spec: {{ nodeName: {}, containers: [ {{ name: app, image: none, \
         ports: [ {{ name: http, containerPort: {BACKEND_PORT} }} ] }} ] }}\n\
         status: {{ phase: Running, podIP: {} }}\n",
        node.name,
        pod.name,
        labels.join(", "),
        node.name,
        pod.ip
    )
}

/// Writes through a hidden temporary and a rename, so a reader never sees
/// half a file.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("manifest");
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&temporary, text)?;
    fs::rename(temporary, path)
}

/// A name no other harness object of any process uses: `fn<pid>-<n>`.
/// Namespaces and pin directories named from it are swept when the process
/// that made them is gone.
pub fn unique_name() -> String {
    format!(
        "{NAME_PREFIX}{}-{}",
        std::process::id(),
        NAMES.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `fleetnet` binary: `$FLEETNET_BIN`, or the one cargo built next to
/// this test binary (`cargo xtask test` builds it first).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEETNET_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("own binary path");
    // Tests live in target/<profile>/deps, binaries in target/<profile>.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("fleetnet"))
        .collect();
    candidates
        .iter()
        .find(|binary| binary.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the fleetnet binary is not built next to {}; run `cargo build -p dataplane-agent` \
                 first (`cargo xtask test` does) or set FLEETNET_BIN",
                exe.display()
            )
        })
}

/// Gives `netns` an `eth0` with `ip`/15 whose other end, `port`, is on
/// `underlay`'s bridge.
fn join_underlay(
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

/// Removes a node's pins: maps, and links (which detaches them).
fn remove_pins(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn kept_state_path() -> PathBuf {
    std::env::temp_dir().join("fleetnet-demo.state")
}

/// The fleet a `demo --keep` left running: its process is gone on purpose,
/// so sweeps must leave it alone.
fn kept_fleet_name() -> Option<String> {
    let state = fs::read_to_string(kept_state_path()).ok()?;
    state
        .lines()
        .find_map(|line| line.strip_prefix("name ").map(str::to_string))
}

/// SIGTERM, and SIGKILL if the process is still there after 10 s.
fn stop_process(pid: Pid) {
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Removes pin directories of harness runs whose process is gone, except
/// those of the `kept` fleet.
fn sweep_stale_pins(kept: Option<&str>) {
    let Ok(entries) = fs::read_dir(BPF_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if netns::is_stale(NAME_PREFIX, &name, kept) {
            let _ = remove_pins(&entry.path());
        }
    }
}

/// Writes a line to stderr right away (progress in long tests and the demo).
/// SIGTERM to `child`, then SIGKILL after 10 s; an unclean exit is an
/// error that shows `log`.
pub(crate) fn terminate(mut child: Child, what: &str, log: impl Fn() -> String) -> io::Result<()> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            return Err(io::Error::other(format!(
                "{what} exited with {status}; its log:\n{}",
                log()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!("{what} ignored SIGTERM for 10 s")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The body of `GET path` from `address`, asked from inside `netns`.
pub fn http_get(netns: &Netns, address: SocketAddr, path: &str) -> io::Result<String> {
    netns.enter(|| {
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        std::io::Write::write_all(
            &mut stream,
            format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes(),
        )?;
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response)?;
        Ok::<_, io::Error>(
            response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .unwrap_or_default(),
        )
    })?
}

/// The value of the line of a metrics exposition starting with `series`
/// (name and labels exactly as exposed), if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

pub fn progress(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}
