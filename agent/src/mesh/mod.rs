//! The shared etcd keyspace as one node sees it: the cluster's
//! registration, this node's session and the keys it publishes under it,
//! identities allocated and collected in etcd, and the watch of what every
//! other cluster published, validated into the mesh state. The keys and
//! records themselves are the store crate's (`fleetnet_store`).

pub mod identity;
pub mod publish;
pub mod registration;
pub mod session;
pub mod state;
pub mod watcher;
