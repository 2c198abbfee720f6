//! The shared etcd keyspace: what each cluster publishes and how this
//! agent reads everyone else's.

pub mod etcd;
pub mod identity;
pub mod keys;
pub mod records;
pub mod registration;
pub mod session;
pub mod state;
pub mod watcher;
