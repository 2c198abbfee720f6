//! Identity-based network policy: Kubernetes NetworkPolicy objects
//! ([`rules`]) compiled against every identity of every cluster
//! ([`compile`]) into entries of the datapath's policy map.
//!
//! Peer selectors pick identities, not addresses, so a rule follows pods
//! across clusters: the cluster label (`fleetnet.io/cluster`, or Cilium's
//! `io.cilium.k8s.policy.cluster`) in a peer's podSelector picks clusters;
//! without it, a peer means pods of the local cluster only.

pub mod cidr;
pub mod compile;
pub mod groups;
pub mod identity;
pub mod ports;
pub mod rules;
pub mod selector;
pub mod set;

#[cfg(test)]
mod tests;
