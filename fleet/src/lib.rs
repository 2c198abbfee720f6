//! The fleet's governance: mesh config revisions (immutable bundles of
//! mesh-wide NetworkPolicies and live dataplane settings), strategies (how
//! a change travels through groups of clusters) and runs (one revision
//! rolled out with one strategy), stored in etcd apart from the mesh
//! keyspace, so agents watching the mesh never see them.
//!
//! The controller ([`controller`]) moves runs forward by writing each
//! cluster's target revision; what to write is decided by a pure state
//! machine ([`rollout`]) over the runs and the agents' reports, and
//! committed in one transaction ([`store`]). Agents follow their
//! cluster's target (the agent crate's `rollout_follower`), apply the
//! whole bundle or nothing, and report what they applied ([`model`]).
//!
//! Cluster lifecycle ([`membership`]): join, cordon, retire, with the
//! fleet's CA and each member's etcd user.
//!
//! Nothing here loads or knows the datapath.

pub mod controller;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod prometheus_query;
pub mod render;
pub mod rollout;
pub mod store;
