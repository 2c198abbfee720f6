//! This node's pods in the datapath. A pod is attached (from_pod and to_pod
//! on its host-side veth, an entry in the endpoints map) once the node has a /32
//! route to it, which is how a veth-based CNI announces a pod's network is
//! ready; until then it waits, with one warning. A pod whose route moves to
//! another interface (it was recreated) is re-attached; a pod that is gone
//! is detached. Map entries of a previous run are kept until the first
//! complete pass, then whatever no pod claims is removed.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use dataplane_common::{
    EndpointInfo, identity,
    maps::{PROG_FROM_POD, PROG_TO_POD},
};
use tracing::{info, warn};

use fleetnet_policy::compile::Assignment;

use crate::{
    datapath::{
        Datapath,
        netlink::{Netlink, NetlinkError, PodInterface},
    },
    metrics::{MapLabel, Metrics},
    source::state::NodePod,
};

/// A pod waiting this long for its interface is worth a warning (CNIs
/// normally finish in well under a second).
const WAIT_WARNING: Duration = Duration::from_secs(5);

/// On a pod's host-side veth: what it sends, and what the stack delivers to it.
const POD_PROGRAMS: [&str; 2] = [PROG_FROM_POD, PROG_TO_POD];

struct Attached {
    pod: (String, String),
    interface: PodInterface,
    info: EndpointInfo,
}

pub struct EndpointProgrammer {
    attached: BTreeMap<Ipv4Addr, Attached>,
    /// Pods without an interface yet, since when, and whether that was
    /// already reported.
    waiting: BTreeMap<Ipv4Addr, (Instant, bool)>,
    programmed: BTreeMap<[u8; 4], EndpointInfo>,
    pruned: bool,
    /// The largest packet a pod may send to another node (0: unknown).
    path_mtu: u16,
    /// A pod with a larger interface MTU was reported.
    warned_mtu: bool,
}

impl EndpointProgrammer {
    /// Starts from what the endpoints map holds now.
    pub fn new(existing: BTreeMap<[u8; 4], EndpointInfo>) -> Self {
        Self {
            attached: BTreeMap::new(),
            waiting: BTreeMap::new(),
            programmed: existing,
            pruned: false,
            path_mtu: 0,
            warned_mtu: false,
        }
    }

    /// The path MTU pods' interfaces are held against.
    pub fn set_path_mtu(&mut self, mtu: u16) {
        self.path_mtu = mtu;
    }

    /// Entries in the endpoints map.
    pub fn entries(&self) -> usize {
        self.programmed.len()
    }

    /// Pods attached to the datapath.
    pub fn attached(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.attached.keys().copied()
    }

    /// The policy group the endpoints map gives `ip` now (also from a
    /// previous run's map).
    pub fn policy_id(&self, ip: Ipv4Addr) -> Option<u16> {
        self.programmed
            .get(&ip.octets())
            .map(|info| info.policy_id)
            .filter(|id| *id != 0)
    }

    /// Brings attachments and the endpoints map in line with `pods`, with
    /// each pod's identity and place in the policy map.
    pub async fn reconcile(
        &mut self,
        pods: &BTreeMap<Ipv4Addr, NodePod>,
        identity_of: impl Fn(&NodePod) -> Option<u32>,
        policy_of: impl Fn(&NodePod) -> Assignment,
        netlink: &Netlink,
        datapath: &mut Datapath,
        metrics: &Metrics,
    ) -> Result<(), NetlinkError> {
        let routes = netlink.host_routes().await?;
        // Gone, renamed or moved pods first.
        let leaving: Vec<Ipv4Addr> = self
            .attached
            .iter()
            .filter(|(ip, attached)| {
                let same_pod = pods
                    .get(ip)
                    .is_some_and(|pod| (pod.namespace.clone(), pod.name.clone()) == attached.pod);
                !same_pod || routes.get(ip) != Some(&attached.interface.host.index)
            })
            .map(|(ip, _)| *ip)
            .collect();
        for ip in leaving {
            // Gone, or its interface changed: detached and out of the map
            // now; a pod still wanted is attached again below.
            let attached = self.attached.remove(&ip).expect("listed above");
            for program in POD_PROGRAMS {
                datapath.detach(program, attached.interface.host.index);
            }
            self.remove(ip, datapath, metrics);
            info!(pod = %format!("{}/{}", attached.pod.0, attached.pod.1), %ip, "pod left the datapath");
        }
        self.waiting.retain(|ip, _| pods.contains_key(ip));

        for (ip, pod) in pods {
            let identity = identity_of(pod).unwrap_or(identity::INIT);
            let Assignment { flags, policy_id } = policy_of(pod);
            if let Some(attached) = self.attached.get_mut(ip) {
                let info = &mut attached.info;
                if (info.identity, info.flags, info.policy_id) != (identity, flags, policy_id) {
                    info.identity = identity;
                    info.flags = flags;
                    info.policy_id = policy_id;
                    let info = *info;
                    self.write(*ip, info, datapath, metrics);
                }
                continue;
            }
            let name = format!("{}/{} ({ip})", pod.namespace, pod.name);
            let Some(index) = routes.get(ip) else {
                self.wait(*ip, || {
                    format!("pod {name}: no /32 route to it on this node; it is attached once its network is set up")
                });
                continue;
            };
            let interface = match netlink.pod_interface(&name, *index).await {
                Ok(interface) => interface,
                Err(error) => {
                    self.wait(*ip, || format!("{error}; retrying"));
                    continue;
                }
            };
            let attached = POD_PROGRAMS.iter().try_for_each(|program| {
                datapath.attach(program, &interface.host.name, interface.host.index)
            });
            if let Err(error) = attached {
                for program in POD_PROGRAMS {
                    datapath.detach(program, interface.host.index);
                }
                self.wait(*ip, || format!("pod {name}: {error}; retrying"));
                continue;
            }
            let info = EndpointInfo {
                ifindex: interface.host.index,
                identity,
                mac: interface.pod_mac,
                node_mac: interface.host.mac,
                policy_id,
                flags,
            };
            self.write(*ip, info, datapath, metrics);
            self.waiting.remove(ip);
            info!(pod = %name, interface = %interface.host.name, "pod attached");
            self.attached.insert(
                *ip,
                Attached {
                    pod: (pod.namespace.clone(), pod.name.clone()),
                    interface,
                    info,
                },
            );
        }

        if !self.pruned {
            self.pruned = true;
            let stale: Vec<[u8; 4]> = self
                .programmed
                .keys()
                .filter(|ip| !self.attached.contains_key(&Ipv4Addr::from(**ip)))
                .copied()
                .collect();
            for ip in stale {
                self.remove(ip.into(), datapath, metrics);
            }
        }
        metrics.local_endpoints.set(self.attached.len() as i64);
        metrics.pending_endpoints.set(self.waiting.len() as i64);
        self.check_mtu(metrics);
        Ok(())
    }

    /// Counts the pods whose interface MTU is over the path MTU, and warns
    /// once: their larger packets to other nodes are answered with ICMP
    /// "fragmentation needed" rather than carried.
    fn check_mtu(&mut self, metrics: &Metrics) {
        if self.path_mtu == 0 {
            return;
        }
        let mut over = self
            .attached
            .values()
            .filter(|attached| attached.interface.host.mtu > u32::from(self.path_mtu));
        let first = over.next();
        metrics
            .endpoints_over_path_mtu
            .set(first.map_or(0, |_| 1 + over.count()) as i64);
        if let Some(attached) = first
            && !self.warned_mtu
        {
            self.warned_mtu = true;
            warn!(
                pod = %format!("{}/{}", attached.pod.0, attached.pod.1),
                mtu = attached.interface.host.mtu,
                path_mtu = self.path_mtu,
                "pods have a larger MTU than the path to other nodes carries; their larger \
                 packets are answered with ICMP fragmentation needed (TCP adapts, by MSS \
                 clamping): give pods an MTU of {} (see fleetnet_endpoints_over_path_mtu)",
                self.path_mtu
            );
        }
    }

    /// Notes a pod still waiting; warns once when it has waited too long.
    fn wait(&mut self, ip: Ipv4Addr, why: impl FnOnce() -> String) {
        let (since, warned) = self.waiting.entry(ip).or_insert((Instant::now(), false));
        if !*warned && since.elapsed() >= WAIT_WARNING {
            *warned = true;
            warn!("{}", why());
        }
    }

    fn write(
        &mut self,
        ip: Ipv4Addr,
        info: EndpointInfo,
        datapath: &mut Datapath,
        metrics: &Metrics,
    ) {
        match datapath.maps.upsert_endpoint(ip.octets(), info) {
            Ok(()) => {
                self.programmed.insert(ip.octets(), info);
            }
            Err(error) => {
                warn!(%ip, "cannot write the endpoints map: {error}");
                metrics
                    .map_write_errors
                    .get_or_create(&MapLabel {
                        map: "endpoints".into(),
                    })
                    .inc();
            }
        }
    }

    fn remove(&mut self, ip: Ipv4Addr, datapath: &mut Datapath, metrics: &Metrics) {
        if self.programmed.remove(&ip.octets()).is_none() {
            return;
        }
        if let Err(error) = datapath.maps.remove_endpoint(ip.octets()) {
            warn!(%ip, "cannot remove from the endpoints map: {error}");
            metrics
                .map_write_errors
                .get_or_create(&MapLabel {
                    map: "endpoints".into(),
                })
                .inc();
        }
    }
}
