//! fleetnet's shared store: the etcd every agent, controller and command
//! talks to. How to reach it (TLS, logging in, members that stop
//! answering), how to retry when it does not answer, how to list it, and
//! what its keys and values are: the key schema of the mesh
//! (`/fleetnet/v1/`) and of the fleet (`/fleetnet/fleet/v1/`), the etcd
//! roles that keep clusters apart, and the mesh's record encodings.
//!
//! Nothing here knows about the datapath or Kubernetes.

pub mod connect;
pub mod fleet_keys;
pub mod keys;
pub mod list;
pub mod members;
pub mod names;
pub mod observe_names;
pub mod records;
pub mod retry;
pub mod roles;
pub mod time;

pub use connect::{Credentials, EtcdError, TlsFiles, connect, connect_as};
pub use list::{StoredValue, Update, list, list_at, prefix_end};
pub use retry::Retry;
