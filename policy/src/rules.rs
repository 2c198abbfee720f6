//! NetworkPolicy objects read into rules the compiler can apply, checked
//! the way the Kubernetes API server checks them. A policy that does not
//! parse is refused as a whole with one sentence saying why.

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::identity::CLUSTER_LABEL;
use crate::selector::Selector;

/// Cilium's name for the cluster label, accepted in peer selectors.
pub const CILIUM_CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// One NetworkPolicy, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// The pods of `namespace` it applies to.
    pub selector: Selector,
    /// `None` when the policy does not cover ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule: traffic with any of `peers` on any of
/// `ports` is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<PortRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods (of any cluster the selector allows) in some namespaces.
    Pods {
        namespaces: Namespaces,
        pods: Selector,
    },
    /// Addresses outside the mesh's pods.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// The policy's own namespace.
    Named(String),
    /// Namespaces whose labels match.
    Selected(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub protocol: u8,
    pub port: Port,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// Every port of the protocol.
    Any,
    /// `first..=last`.
    Range(u16, u16),
    /// A container port name, resolved on the pod that owns the port.
    Named(String),
}

impl Policy {
    /// Reads `policy`; `cluster` is the local cluster, the one peer
    /// selectors pick when they name no cluster.
    pub fn parse(policy: &NetworkPolicy, cluster: &str) -> Result<Self, String> {
        let metadata = &policy.metadata;
        let namespace = metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = metadata.name.clone().unwrap_or_default();
        let spec = policy.spec.clone().unwrap_or_default();
        let selector = Selector::parse(&spec.pod_selector.unwrap_or_default())
            .map_err(|error| format!("spec.podSelector: {error}"))?;

        // Kubernetes' defaults: every policy covers ingress, and egress
        // too when it has egress rules.
        let (mut ingress, mut egress) = (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()));
        if let Some(types) = &spec.policy_types {
            (ingress, egress) = (false, false);
            for kind in types {
                match kind.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return Err(format!(
                            "spec.policyTypes: unknown type {other:?} (use Ingress or Egress)"
                        ));
                    }
                }
            }
        }

        let context = Context {
            namespace: &namespace,
            cluster,
        };
        let ingress_rules = spec.ingress.iter().flatten();
        let egress_rules = spec.egress.iter().flatten();
        let ingress = ingress
            .then(|| {
                let rules = ingress_rules.map(|r| (r.from.as_deref(), r.ports.as_deref()));
                context.rules("spec.ingress", rules)
            })
            .transpose()?;
        let egress = egress
            .then(|| {
                let rules = egress_rules.map(|r| (r.to.as_deref(), r.ports.as_deref()));
                context.rules("spec.egress", rules)
            })
            .transpose()?;
        Ok(Self {
            namespace,
            name,
            selector,
            ingress,
            egress,
        })
    }

    pub fn rules(&self, ingress: bool) -> Option<&[Rule]> {
        if ingress {
            self.ingress.as_deref()
        } else {
            self.egress.as_deref()
        }
    }

    /// Every prefix an ipBlock of this policy names (cidr and except).
    pub fn cidrs(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.ingress
            .iter()
            .chain(self.egress.iter())
            .flatten()
            .flat_map(|rule| rule.peers.iter().flatten())
            .flat_map(|peer| match peer {
                Peer::Block { cidr, except } => {
                    std::iter::once(*cidr).chain(except.clone()).collect()
                }
                Peer::Pods { .. } => Vec::new(),
            })
    }
}

struct Context<'a> {
    namespace: &'a str,
    cluster: &'a str,
}

impl Context<'_> {
    /// The rules of one direction; errors name the rule (`field[i]`).
    fn rules<'a>(
        &self,
        field: &str,
        rules: impl Iterator<
            Item = (
                Option<&'a [NetworkPolicyPeer]>,
                Option<&'a [NetworkPolicyPort]>,
            ),
        >,
    ) -> Result<Vec<Rule>, String> {
        rules
            .enumerate()
            .map(|(i, (peers, ports))| {
                self.rule(peers, ports)
                    .map_err(|error| format!("{field}[{i}]: {error}"))
            })
            .collect()
    }

    fn rule(
        &self,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
    ) -> Result<Rule, String> {
        // Empty or missing lists match everything.
        let peers = match peers {
            Some(peers) if !peers.is_empty() => {
                let mut parsed = Vec::new();
                for (i, peer) in peers.iter().enumerate() {
                    let peer = self
                        .peer(peer)
                        .map_err(|error| format!("peer {i}: {error}"))?;
                    parsed.extend(peer);
                }
                Some(parsed)
            }
            _ => None,
        };
        let ports = match ports {
            Some(ports) if !ports.is_empty() => Some(
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, port)| port_rule(port).map_err(|error| format!("port {i}: {error}")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => None,
        };
        Ok(Rule { peers, ports })
    }

    /// A peer; `None` for an IPv6 block, which no IPv4 packet matches.
    fn peer(&self, peer: &NetworkPolicyPeer) -> Result<Option<Peer>, String> {
        let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        if let Some(block) = &peer.ip_block {
            if selectors {
                return Err(
                    "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
                );
            }
            return ip_block(block);
        }
        if !selectors {
            return Err("needs a podSelector, a namespaceSelector or an ipBlock".into());
        }
        let pods = match &peer.pod_selector {
            Some(selector) => {
                Selector::parse(selector).map_err(|error| format!("podSelector: {error}"))?
            }
            None => Selector::default(),
        };
        // The cluster label picks clusters; without it, only this one.
        let pods = pods.rename_key(CILIUM_CLUSTER_LABEL, CLUSTER_LABEL);
        let pods = if pods.mentions(CLUSTER_LABEL) {
            pods
        } else {
            pods.and_equals(CLUSTER_LABEL, self.cluster)
        };
        let namespaces = match &peer.namespace_selector {
            Some(selector) => Namespaces::Selected(
                Selector::parse(selector).map_err(|error| format!("namespaceSelector: {error}"))?,
            ),
            None => Namespaces::Named(self.namespace.to_string()),
        };
        Ok(Some(Peer::Pods { namespaces, pods }))
    }
}

fn ip_block(block: &IPBlock) -> Result<Option<Peer>, String> {
    let parse = |text: &str| {
        text.parse::<IpNet>()
            .map_err(|_| format!("ipBlock: {text:?} is not a CIDR such as 10.0.0.0/8"))
    };
    let cidr = match parse(&block.cidr)? {
        IpNet::V4(cidr) => cidr.trunc(),
        IpNet::V6(_) => return Ok(None),
    };
    let mut except = Vec::new();
    for text in block.except.iter().flatten() {
        let inside = match parse(text)? {
            IpNet::V4(e) => (cidr.contains(&e.network()) && e.prefix_len() > cidr.prefix_len())
                .then_some(e.trunc()),
            IpNet::V6(_) => None,
        };
        let Some(e) = inside else {
            return Err(format!(
                "ipBlock: except {text} is not strictly inside cidr {}",
                block.cidr
            ));
        };
        except.push(e);
    }
    Ok(Some(Peer::Block { cidr, except }))
}

fn port_rule(port: &NetworkPolicyPort) -> Result<PortRule, String> {
    let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => IPPROTO_TCP,
        "UDP" => IPPROTO_UDP,
        "SCTP" => IPPROTO_SCTP,
        other => {
            return Err(format!("unknown protocol {other:?} (use TCP, UDP or SCTP)"));
        }
    };
    let number = |n: i32| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{n} is not a port (1-65535)"))
    };
    let port = match (&port.port, port.end_port) {
        (None, None) => Port::Any,
        (None, Some(_)) => return Err("endPort needs a numeric port".into()),
        (Some(IntOrString::Int(n)), None) => {
            let n = number(*n)?;
            Port::Range(n, n)
        }
        (Some(IntOrString::Int(n)), Some(end)) => {
            let (first, last) = (number(*n)?, number(end)?);
            if last < first {
                return Err(format!("endPort {last} is below port {first}"));
            }
            Port::Range(first, last)
        }
        (Some(IntOrString::String(name)), None) => match name.parse::<i32>() {
            // "8080" in a string is a number to the API server too.
            Ok(n) => {
                let n = number(n)?;
                Port::Range(n, n)
            }
            Err(_) if name.is_empty() => return Err("empty port name".into()),
            Err(_) => Port::Named(name.clone()),
        },
        (Some(IntOrString::String(name)), Some(_)) => {
            return Err(format!(
                "endPort cannot be used with the named port {name:?}"
            ));
        }
    };
    Ok(PortRule { protocol, port })
}
