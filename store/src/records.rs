//! The values stored in the keyspace: compact JSON with a version field.
//! Decoding checks the version and sizes, so a value from a newer agent or
//! a hostile writer is skipped with a reason instead of misread.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The record format this agent reads and writes.
pub const VERSION: u32 = 1;
/// Larger values are refused before parsing (etcd's own limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub v: u32,
    pub id: u16,
    pub pod_cidrs: Vec<Ipv4Net>,
    /// The cluster's labels (`cluster.labels`), which rollout stages select.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How the cluster's pods reach other clusters' (`routing.mode`).
    #[serde(default, skip_serializing_if = "RoutingMode::is_tunnel")]
    pub routing: RoutingMode,
    /// Exceptions by peer cluster (`routing.peers`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routing_peers: BTreeMap<String, RoutingMode>,
}

impl ClusterRecord {
    /// How this cluster's pods reach `peer`'s: its exception for the
    /// peer, or its mode.
    pub fn routing_towards(&self, peer: &str) -> RoutingMode {
        self.routing_peers
            .get(peer)
            .copied()
            .unwrap_or(self.routing)
    }
}

/// How pods of two clusters reach each other: through the VXLAN tunnel
/// (any underlay), or natively, unencapsulated, where the underlay routes
/// both clusters' pod CIDRs. Both clusters must say the same of each
/// other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    #[default]
    Tunnel,
    Native,
}

impl RoutingMode {
    pub fn is_tunnel(&self) -> bool {
        *self == RoutingMode::Tunnel
    }

    pub fn label(self) -> &'static str {
        match self {
            RoutingMode::Tunnel => "tunnel",
            RoutingMode::Native => "native",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub v: u32,
    /// Underlay address other nodes tunnel to.
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub v: u32,
    pub identity: u32,
    /// The node (of the same cluster) hosting the endpoint.
    pub node: String,
    pub namespace: String,
    pub pod: String,
    /// Named container ports: name to (IP protocol, port), for policies
    /// that name a port of the peer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, (u8, u16)>,
}

/// An exported backend; the address and ports are in its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    pub v: u32,
    /// The node hosting the endpoint (whose lease the key lives under).
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub v: u32,
    pub labels: BTreeMap<String, String>,
}

/// A member of the fleet: what `fleetnet cluster join` claimed for the
/// cluster, and where it is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub v: u32,
    pub id: u16,
    pub pod_cidrs: Vec<Ipv4Net>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub state: MemberState,
    /// How many times a cluster of this name has joined: part of its etcd
    /// user's name ([`crate::roles::member_user`]).
    pub generation: u32,
    /// Unix seconds when it entered `state` (draining: the drain's start).
    #[serde(default)]
    pub since: f64,
}

/// Where a member is in its lifecycle. "Active" is not stored: it is a
/// joined member while one of its nodes publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Joined: its credentials exist, its agents may publish.
    Joined,
    /// Other clusters choose its backends for no new connection (unless
    /// no other backend is left); its own pods work as before.
    Cordoned,
    /// Cordoned on its way out: `fleetnet cluster retire` waits for the
    /// connections to its backends to end.
    Draining,
    /// Gone: its keys and credentials deleted, its name and id free. Its
    /// agents stop and do not come back by themselves.
    Retired,
}

impl MemberState {
    pub fn label(self) -> &'static str {
        match self {
            MemberState::Joined => "joined",
            MemberState::Cordoned => "cordoned",
            MemberState::Draining => "draining",
            MemberState::Retired => "retired",
        }
    }

    /// Other clusters should not choose its backends for new connections.
    pub fn is_cordoned(self) -> bool {
        matches!(self, MemberState::Cordoned | MemberState::Draining)
    }
}

/// Why a stored value was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value of {0} bytes is larger than the {MAX_VALUE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a valid record: {0}")]
    Malformed(String),
    #[error(
        "record version {0} is not one this agent reads (it reads {VERSION}); upgrade the agent"
    )]
    UnknownVersion(u32),
}

pub trait Record: Serialize + DeserializeOwned {
    fn version(&self) -> u32;

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialize")
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        // Read the version first, so a newer format is named as such.
        #[derive(Deserialize)]
        struct Versioned {
            v: u32,
        }
        let versioned: Versioned = serde_json::from_slice(bytes)
            .map_err(|error| DecodeError::Malformed(error.to_string()))?;
        if versioned.v != VERSION {
            return Err(DecodeError::UnknownVersion(versioned.v));
        }
        serde_json::from_slice(bytes).map_err(|error| DecodeError::Malformed(error.to_string()))
    }
}

macro_rules! record {
    ($($name:ident),*) => {
        $(impl Record for $name {
            fn version(&self) -> u32 {
                self.v
            }
        })*
    };
}
record!(
    ClusterRecord,
    NodeRecord,
    EndpointRecord,
    IdentityRecord,
    BackendRecord,
    MemberRecord
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_compactly() {
        let endpoint = EndpointRecord {
            v: VERSION,
            identity: 65792,
            node: "n1".into(),
            namespace: "default".into(),
            pod: "web-0".into(),
            ports: BTreeMap::new(),
        };
        let bytes = endpoint.encode();
        assert!(
            bytes.len() < 96,
            "{} bytes: {}",
            bytes.len(),
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(EndpointRecord::decode(&bytes).unwrap(), endpoint);
        let named = EndpointRecord {
            ports: [("http".to_string(), (6, 8080))].into(),
            ..endpoint
        };
        let bytes = named.encode();
        assert!(
            String::from_utf8_lossy(&bytes).ends_with(r#""ports":{"http":[6,8080]}}"#),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(EndpointRecord::decode(&bytes).unwrap(), named);
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        assert_eq!(
            NodeRecord::decode(br#"{"v":2,"ip":"198.18.0.1","pod_cidrs":[]}"#),
            Err(DecodeError::UnknownVersion(2))
        );
        assert!(matches!(
            NodeRecord::decode(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            NodeRecord::decode(br#"{"v":1,"ip":"999.1.1.1","pod_cidrs":[]}"#),
            Err(DecodeError::Malformed(_))
        ));
        let huge = vec![b' '; MAX_VALUE_BYTES + 1];
        assert_eq!(
            NodeRecord::decode(&huge),
            Err(DecodeError::TooLarge(MAX_VALUE_BYTES + 1))
        );
    }
}
