//! This cluster's state as the source reports it, and what follows for this
//! node: its underlay address and pod CIDRs, and its pods with the labels
//! their security identity is derived from.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use k8s_openapi::{
    api::{
        core::v1::{Node, Pod},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use tracing::warn;

use fleetnet_policy::{
    identity::{CLUSTER_LABEL, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX},
    ports::NamedPorts,
    rules::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::source::{
    Kind, Object, ObjectKey, SourceEvent,
    export::{self, ExportMode},
};

/// This node, as the rest of the mesh needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<Ipv4Net>,
}

/// A pod on this node that fleetnet routes for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// Labels its identity is allocated from.
    pub identity_labels: BTreeMap<String, String>,
    /// Its containers' named ports, which policies may refer to.
    pub named_ports: NamedPorts,
    /// Its namespace is exported: other clusters see it by its identity
    /// ([`crate::source::export`]).
    pub exported: bool,
}

#[derive(Default)]
pub struct SourceState {
    objects: BTreeMap<ObjectKey, Object>,
    relisting: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    listed: BTreeSet<Kind>,
}

impl SourceState {
    /// The state after a complete listing of every kind that returned
    /// exactly `objects`.
    pub fn listed(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut state = Self::default();
        for kind in Kind::ALL {
            state.apply(SourceEvent::Relisting(kind));
        }
        for object in objects {
            state.apply(SourceEvent::Applied(object));
        }
        for kind in Kind::ALL {
            state.apply(SourceEvent::Listed(kind));
        }
        state
    }

    pub fn apply(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Relisting(kind) => {
                self.relisting.insert(kind, BTreeSet::new());
            }
            SourceEvent::Applied(object) => {
                let object = without_reserved_labels(object);
                if let Object::Namespace(ns) = &object
                    && let Err(error) = export::annotation(ns.metadata.annotations.as_ref())
                    && self.objects.get(&object.key()) != Some(&object)
                {
                    warn!(
                        namespace = ns.metadata.name.as_deref().unwrap_or_default(),
                        "{error}"
                    );
                }
                let key = object.key();
                if let Some(seen) = self.relisting.get_mut(&key.kind) {
                    seen.insert(key.clone());
                }
                self.objects.insert(key, object);
            }
            SourceEvent::Deleted(object) => {
                self.objects.remove(&object.key());
            }
            SourceEvent::Listed(kind) => {
                if let Some(seen) = self.relisting.remove(&kind) {
                    self.objects
                        .retain(|key, _| key.kind != kind || seen.contains(key));
                }
                self.listed.insert(kind);
            }
        }
    }

    /// True once every kind has been listed at least once.
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|kind| self.listed.contains(kind))
    }

    pub fn objects(&self, kind: Kind) -> impl Iterator<Item = &Object> + Clone {
        self.objects
            .range(
                ObjectKey {
                    kind,
                    namespace: String::new(),
                    name: String::new(),
                }..,
            )
            .take_while(move |(key, _)| key.kind == kind)
            .map(|(_, object)| object)
    }

    /// This cluster's NetworkPolicies.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.objects(Kind::NetworkPolicy)
            .filter_map(|object| match object {
                Object::NetworkPolicy(policy) => Some(policy.as_ref()),
                _ => None,
            })
    }

    /// The Node object named `node`, read as underlay IP and pod CIDRs.
    pub fn node_info(&self, node: &str) -> Option<NodeInfo> {
        self.objects(Kind::Node).find_map(|object| match object {
            Object::Node(n) if n.metadata.name.as_deref() == Some(node) => node_info(n),
            _ => None,
        })
    }

    /// Every Node object with its pod CIDRs.
    pub fn node_cidrs(&self) -> Vec<(String, Vec<Ipv4Net>)> {
        self.objects(Kind::Node)
            .filter_map(|object| match object {
                Object::Node(n) => Some((n.metadata.name.clone()?, node_info(n)?.pod_cidrs)),
                _ => None,
            })
            .collect()
    }

    /// Pods scheduled on `node` that have an IPv4 address of their own;
    /// those of namespaces that `export` and their annotations export are
    /// marked exported.
    pub fn node_pods(
        &self,
        node: &str,
        cluster: &str,
        export: ExportMode,
    ) -> BTreeMap<Ipv4Addr, NodePod> {
        let namespaces: BTreeMap<&str, &ObjectMeta> = self
            .objects(Kind::Namespace)
            .filter_map(|object| match object {
                Object::Namespace(ns) => Some((ns.metadata.name.as_deref()?, &ns.metadata)),
                _ => None,
            })
            .collect();
        self.objects(Kind::Pod)
            .filter_map(|object| match object {
                Object::Pod(pod) => routable_pod(pod, node).map(|found| (found, named_ports(pod))),
                _ => None,
            })
            .map(|((namespace, name, ip, labels), named_ports)| {
                let mut identity_labels: BTreeMap<String, String> = labels.clone();
                identity_labels.insert(NAMESPACE_LABEL.into(), namespace.clone());
                let metadata = namespaces.get(namespace.as_str());
                let exported = export.exports(metadata.and_then(|m| m.annotations.as_ref()));
                if let Some(ns_labels) = metadata.and_then(|m| m.labels.as_ref()) {
                    for (key, value) in ns_labels {
                        identity_labels
                            .insert(format!("{NAMESPACE_LABELS_PREFIX}{key}"), value.clone());
                    }
                }
                identity_labels.insert(CLUSTER_LABEL.into(), cluster.into());
                let pod = NodePod {
                    namespace,
                    name,
                    ip,
                    identity_labels,
                    named_ports,
                    exported,
                };
                (ip, pod)
            })
            .collect()
    }
}

/// A pod's labels under [`NAMESPACE_LABELS_PREFIX`] would pass, in its
/// identity, for labels of its namespace, and satisfy namespace selectors
/// its namespace does not (Cilium refuses them the same way): they are
/// dropped, with a warning naming the pod and the label.
fn without_reserved_labels(object: Object) -> Object {
    let Object::Pod(mut pod) = object else {
        return object;
    };
    let labels = pod.metadata.labels.iter().flatten();
    let reserved: Vec<String> = labels
        .map(|(key, _)| key)
        .filter(|key| key.starts_with(NAMESPACE_LABELS_PREFIX))
        .cloned()
        .collect();
    for key in reserved {
        if let Some(labels) = pod.metadata.labels.as_mut() {
            labels.remove(&key);
        }
        warn!(
            pod = %format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            "ignoring pod label {key:?}: labels under {NAMESPACE_LABELS_PREFIX} stand for the \
             namespace's labels in identities; label the namespace instead"
        );
    }
    Object::Pod(pod)
}

fn node_info(node: &Node) -> Option<NodeInfo> {
    let ip = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|address| address.type_ == "InternalIP")
        .find_map(|address| address.address.parse::<Ipv4Addr>().ok())?;
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if cidrs.is_empty() {
        cidrs.extend(spec.and_then(|s| s.pod_cidr.clone()));
    }
    let pod_cidrs = cidrs
        .iter()
        .filter_map(|cidr| cidr.parse::<Ipv4Net>().ok())
        .collect();
    Some(NodeInfo { ip, pod_cidrs })
}

/// The named ports of a pod's containers (the first wins on a clash, as
/// with kube-proxy's endpoint ports).
fn named_ports(pod: &Pod) -> NamedPorts {
    let mut ports = NamedPorts::new();
    let containers = pod.spec.iter().flat_map(|spec| &spec.containers);
    for port in containers.flat_map(|c| c.ports.iter().flatten()) {
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => IPPROTO_TCP,
            "UDP" => IPPROTO_UDP,
            "SCTP" => IPPROTO_SCTP,
            _ => continue,
        };
        if let (Some(name), Ok(number)) = (&port.name, u16::try_from(port.container_port)) {
            ports.entry(name.clone()).or_insert((protocol, number));
        }
    }
    ports
}

/// (namespace, name, IPv4, labels) of a pod fleetnet routes on `node`:
/// scheduled there, not host-networked, not finished, with an IPv4 address.
fn routable_pod<'a>(
    pod: &'a Pod,
    node: &str,
) -> Option<(String, String, Ipv4Addr, &'a BTreeMap<String, String>)> {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node) || spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_ref()?.parse::<Ipv4Addr>().ok()?;
    let metadata = &pod.metadata;
    Some((
        metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        metadata.name.clone()?,
        ip,
        metadata.labels.as_ref().unwrap_or(&NO_LABELS),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::parse_documents;

    const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { team: blue } }
---
apiVersion: v1
kind: Node
metadata: { name: n1 }
spec: { podCIDRs: [10.1.1.0/24] }
status: { addresses: [ { type: Hostname, address: n1 }, { type: InternalIP, address: 198.18.1.11 } ] }
---
apiVersion: v1
kind: Pod
metadata: { name: web, namespace: shop, labels: { app: web } }
spec: { nodeName: n1, containers: [ { name: c, image: i, ports: [ { name: http, containerPort: 8080 }, { name: dns, containerPort: 53, protocol: UDP }, { containerPort: 9 } ] } ] }
status: { podIP: 10.1.1.11, phase: Running }
---
apiVersion: v1
kind: Pod
metadata: { name: elsewhere, namespace: shop }
spec: { nodeName: n2, containers: [ { name: c, image: i } ] }
status: { podIP: 10.1.2.11 }
---
apiVersion: v1
kind: Pod
metadata: { name: hostnet, namespace: shop }
spec: { nodeName: n1, hostNetwork: true, containers: [ { name: c, image: i } ] }
status: { podIP: 198.18.1.11 }
---
apiVersion: v1
kind: Pod
metadata: { name: done, namespace: shop }
spec: { nodeName: n1, containers: [ { name: c, image: i } ] }
status: { podIP: 10.1.1.12, phase: Succeeded }
---
apiVersion: v1
kind: Pod
metadata: { name: pending, namespace: shop }
spec: { nodeName: n1, containers: [ { name: c, image: i } ] }
";

    #[test]
    fn this_nodes_routable_pods_carry_pod_namespace_and_cluster_labels() {
        let state = SourceState::listed(parse_documents(MANIFESTS).unwrap());
        assert!(state.synced());
        let pods = state.node_pods("n1", "c1", ExportMode::All);
        assert_eq!(pods.len(), 1, "{pods:?}");
        let web = &pods[&Ipv4Addr::new(10, 1, 1, 11)];
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("shop", "web"));
        let labels: Vec<String> = web
            .identity_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            labels,
            [
                "app=web",
                "fleetnet.io/cluster=c1",
                "io.cilium.k8s.namespace.labels.team=blue",
                "io.kubernetes.pod.namespace=shop"
            ]
        );
        assert_eq!(
            web.named_ports,
            NamedPorts::from([("http".into(), (6, 8080)), ("dns".into(), (17, 53))])
        );
        let node = state.node_info("n1").unwrap();
        assert_eq!(node.ip, Ipv4Addr::new(198, 18, 1, 11));
        assert_eq!(
            node.pod_cidrs,
            vec!["10.1.1.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(state.node_info("n9"), None);
    }

    /// Found by the `annotations` fuzz target: a pod labelled
    /// `io.cilium.k8s.namespace.labels.env: prod` was selected by namespace
    /// selectors on `env: prod` although its namespace has no such label.
    #[test]
    fn a_pod_cannot_claim_its_namespaces_labels() {
        let spoofing = MANIFESTS.replace(
            "labels: { app: web }",
            "labels: { app: web, io.cilium.k8s.namespace.labels.env: prod, io.cilium.k8s.namespace.labels.team: red }",
        );
        let state = SourceState::listed(parse_documents(&spoofing).unwrap());
        let web = &state.node_pods("n1", "c1", ExportMode::All)[&Ipv4Addr::new(10, 1, 1, 11)];
        let namespace_labels: Vec<(&str, &str)> = web
            .identity_labels
            .iter()
            .filter(|(key, _)| key.starts_with(NAMESPACE_LABELS_PREFIX))
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            namespace_labels,
            [("io.cilium.k8s.namespace.labels.team", "blue")],
            "only the namespace's own labels"
        );
        assert_eq!(web.identity_labels["app"], "web", "other labels stay");
    }

    #[test]
    fn pods_are_exported_as_their_namespace_and_the_cluster_default_say() {
        let exported = |manifests: &str, export| {
            let state = SourceState::listed(parse_documents(manifests).unwrap());
            state.node_pods("n1", "c1", export)[&Ipv4Addr::new(10, 1, 1, 11)].exported
        };
        let global = MANIFESTS.replace(
            "name: shop, labels",
            "name: shop, annotations: { clustermesh.cilium.io/global: \"true\" }, labels",
        );
        let kept = MANIFESTS.replace(
            "name: shop, labels",
            "name: shop, annotations: { fleetnet.io/export: \"false\" }, labels",
        );
        assert!(exported(MANIFESTS, ExportMode::All));
        assert!(!exported(MANIFESTS, ExportMode::Annotated));
        assert!(exported(&global, ExportMode::Annotated));
        assert!(!exported(&kept, ExportMode::All));
        // A pod whose namespace object is missing follows the default.
        let orphan = MANIFESTS.replace(
            "namespace: shop, labels: { app: web }",
            "namespace: gone, labels: { app: web }",
        );
        assert!(exported(&orphan, ExportMode::All));
        assert!(!exported(&orphan, ExportMode::Annotated));
    }

    #[test]
    fn a_relisting_forgets_objects_it_did_not_see_again() {
        let objects = parse_documents(MANIFESTS).unwrap();
        let mut state = SourceState::listed(objects.clone());
        state.apply(SourceEvent::Relisting(Kind::Pod));
        for object in objects.iter().filter(|o| o.kind() != Kind::Pod) {
            state.apply(SourceEvent::Applied(object.clone()));
        }
        assert_eq!(
            state.node_pods("n1", "c1", ExportMode::All).len(),
            1,
            "nothing is forgotten before the listing ends"
        );
        state.apply(SourceEvent::Listed(Kind::Pod));
        assert!(state.node_pods("n1", "c1", ExportMode::All).is_empty());
        assert!(state.node_info("n1").is_some(), "other kinds are untouched");
    }
}
