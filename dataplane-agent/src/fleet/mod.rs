//! The fleet controller's world: mesh config revisions (immutable bundles
//! of mesh-wide NetworkPolicies and dataplane settings), strategies (how a
//! change travels through groups of clusters), and runs (one revision
//! rolled out with one strategy), stored in etcd apart from the mesh
//! keyspace, so agents watching the mesh never see them.
//!
//! The controller ([`controller`]) moves runs forward by writing each
//! cluster's target revision ([`rollout`] decides what to write); agents
//! follow their cluster's target ([`follow`]), apply the whole bundle or
//! nothing, and report what they applied under their lease.

pub mod cli;
pub mod controller;
pub mod follow;
pub mod keys;
pub mod model;
pub mod render;
pub mod rollout;
pub mod store;
