//! FleetInABox in a box: clusters of nodes of pods, all network namespaces on
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
//!   ([`fleetnet_store::roles::cluster_role`]) writes only that
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
//! - with [`FleetSpec::routed_underlay`], a router namespace on the bridge
//!   (198.18.0.1) holds each node's pod CIDR as a route, as cloud route
//!   tables do, and each node routes 10.0.0.0/8 through it: what natively
//!   routed clusters need ([`FleetSpec::native`]).
//!
//! Nothing is added to the root namespace. Dropping the fleet stops the
//! agents and etcd and deletes every namespace and pin directory, also on

mod agents;
mod convergence;
mod etcd_ops;
mod kubelet;
mod manifests;
mod pods;
mod router;
mod teardown;

use std::{
    collections::BTreeMap,
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use ipnet::Ipv4Net;

pub(crate) use self::agents::terminate;
pub use self::{
    etcd_ops::{etcd_member_ip, etcd_user},
    kubelet::{DAEMONSET_FILE, Image, Replacement, current_image, test_build_binary},
    manifests::{endpoint_slice_yaml, service_yaml},
    router::ROUTER_IP,
};
use self::{
    manifests::node_yaml,
    pods::join_underlay,
    teardown::{kept_fleet_name, remove_pins, sweep_stale_pins},
};
use crate::{
    etcd::Etcd,
    netns::{self, Netns},
};

const NAME_PREFIX: &str = "fn";
const BPF_DIR: &str = "/sys/fs/bpf/fleetnet";
/// Gateway address every pod routes through (as in Cilium's and Calico's
/// link-local gateways).
pub const POD_GATEWAY: &str = "169.254.1.1";
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
    /// MTU of every pod's interface (both ends of its veth): 1450, what
    /// the underlay's 1500 carries with VXLAN's 50, or more, to see the
    /// datapath hold packets to the path MTU.
    pub pod_mtu: u16,
    /// etcd with authentication enabled: a root user (the harness's), and
    /// one user per cluster (`fleetnet-cC`) with a role that reads the mesh
    /// and writes only that cluster's keys; agents log in as theirs.
    pub etcd_auth: bool,
    /// With [`FleetSpec::etcd_auth`], how many clusters (from c1) the
    /// harness gives an etcd user; the others are left to `fleetnet
    /// cluster join` ([`FleetInABox::fleetnet_admin`]).
    pub etcd_users: u16,
    /// A router on the underlay holding every node's pod CIDR as a route
    /// (as a cloud's route table does), nodes sending other pods' traffic
    /// through it; without, one bridged segment that routes no pods.
    pub routed_underlay: bool,
    /// The agents' `routing` section for cluster `c` (1-based) as a YAML
    /// flow map, e.g. `{ mode: native }`.
    pub cluster_routing: fn(u16) -> String,
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
            pod_mtu: 1450,
            etcd_auth: false,
            etcd_users: u16::MAX,
            routed_underlay: false,
            cluster_routing: |_| "{}".to_string(),
        }
    }

    /// This fleet natively routed: a routed underlay, every cluster
    /// `routing: { mode: native }`.
    pub const fn native(self) -> Self {
        Self {
            routed_underlay: true,
            cluster_routing: |_| "{ mode: native }".to_string(),
            ..self
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

pub struct FleetInABox {
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
    /// The underlay's router (with [`FleetSpec::routed_underlay`]).
    router: Option<Netns>,
}

static NAMES: AtomicU32 = AtomicU32::new(0);

impl FleetInABox {
    /// Builds the namespaces, etcd, the clusters' manifests and each node's
    /// agent config. Agents are started by [`FleetInABox::start_agents`].
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
            router: None,
        };
        if spec.etcd_auth {
            fleet.enable_etcd_auth()?;
        }
        if spec.routed_underlay {
            fleet.add_router()?;
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
                fleet.route_node(&node)?;
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
}

impl Drop for FleetInABox {
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
                "the fleetnet binary is not built next to {}; run `cargo build -p fleetnet-cli` \
                 first (`cargo xtask test` does) or set FLEETNET_BIN",
                exe.display()
            )
        })
}
