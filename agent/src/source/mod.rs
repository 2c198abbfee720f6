//! Sources of this cluster's state: a Kubernetes API server (`kube`) or a
//! directory of manifests (`manifests`). Both speak the same stream of
//! [`SourceEvent`]s over the same k8s-openapi types, so everything after
//! this point is one code path.

pub mod export;
pub mod kube;
pub mod manifests;
pub mod state;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};

/// The kinds of object the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Pod,
    Namespace,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Node,
        Kind::Pod,
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ];
}

/// One object of a kind the agent reads (boxed: k8s-openapi types are large
/// and differ a lot in size).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Node(Box<Node>),
    Pod(Box<Pod>),
    Namespace(Box<Namespace>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    /// `namespace/name` (or `name` for cluster-scoped objects).
    pub fn key(&self) -> ObjectKey {
        let metadata = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// What a source reports. A listing (initial or after a gap) is
/// `Relisting(kind)`, the objects as `Applied`, then `Listed(kind)`: objects
/// of that kind not applied in between are gone.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    Relisting(Kind),
    Applied(Object),
    Deleted(Object),
    Listed(Kind),
}
