//! The vocabulary of security identities that policies select on: the
//! labels an identity carries besides a pod's own, and the numbers a
//! cluster's identities are allocated from.

use std::collections::BTreeMap;

/// A label set: a pod's labels, an identity's, a cluster's.
pub type Labels = BTreeMap<String, String>;

/// Label carrying the cluster name in identities and policy selectors.
pub const CLUSTER_LABEL: &str = "fleetnet.io/cluster";
/// Cilium's names for the namespace of a pod and its namespace's labels.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// Per-cluster indexes below this are left unused (reserved, as in Cilium).
pub const FIRST_INDEX: u16 = 256;
