//! Numeric security identities.
//!
//! An identity is 32 bits: the cluster id in the high 16 bits and a
//! per-cluster index in the low 16. Identities below [`FIRST_CLUSTER_ID`]
//! `<< 16` are reserved and mean the same thing in every cluster, as in
//! Cilium. Because the cluster is part of the identity, a receiver can tell
//! which cluster an identity belongs to and reject one cluster minting
//! another's.

/// Unknown source.
pub const UNKNOWN: u32 = 0;
/// The local host.
pub const HOST: u32 = 1;
/// Anything outside the mesh.
pub const WORLD: u32 = 2;
/// A pod fleetnet knows by address only (no labels yet).
pub const UNMANAGED: u32 = 3;
/// Health checks.
pub const HEALTH: u32 = 4;
/// Endpoints whose identity is not resolved yet.
pub const INIT: u32 = 5;
/// Another node of the mesh.
pub const REMOTE_NODE: u32 = 6;

/// The index, in every cluster's range, of "a pod of this cluster that it
/// does not export": what its nodes' pod CIDRs resolve to for a pod the
/// mesh knows by no identity of its own.
pub const CLUSTER_PODS_INDEX: u16 = 1;

/// Cluster ids start at 1; 0 means "no cluster" (reserved identities).
pub const FIRST_CLUSTER_ID: u16 = 1;

/// The identity with `index` inside `cluster_id`'s range.
pub const fn make(cluster_id: u16, index: u16) -> u32 {
    ((cluster_id as u32) << 16) | index as u32
}

/// The identity of `cluster_id`'s pods that it does not export.
pub const fn cluster_pods(cluster_id: u16) -> u32 {
    make(cluster_id, CLUSTER_PODS_INDEX)
}

/// The cluster an identity belongs to (0 for reserved identities).
pub const fn cluster_of(identity: u32) -> u16 {
    (identity >> 16) as u16
}
