//! The names in the certificates of the fleet's observe API: agents serve
//! `/status` and `/flows` to the relay over mutual TLS, both ends holding a
//! certificate from the fleet CA. The names are checked, never resolved,
//! like Hubble's `*.<cluster>.hubble-grpc.cilium.io`.

/// The name in the serving certificate every agent of `cluster` holds,
/// which the relay checks when it connects to one of them: an agent of
/// another cluster cannot answer for this one.
pub fn agent_name(cluster: &str) -> String {
    format!("{cluster}.agents.fleetnet")
}

/// The name in the relay's client certificate, the only client an agent
/// answers over its observe listener: a cluster's own etcd certificates,
/// from the same CA, are refused there.
pub const RELAY_NAME: &str = "relay.fleetnet";
