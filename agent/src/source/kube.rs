//! The `kube` source: kube-rs watchers on Nodes, this node's Pods (field
//! selector `spec.nodeName`), Namespaces, Services, EndpointSlices and
//! NetworkPolicies.
//! In-cluster configuration is used when no kubeconfig is given.
//!
//! kube-runtime's watcher lists, then watches from the list's
//! resourceVersion, follows bookmarks, and lists again when the API server
//! answers 410 Gone; its Init / InitApply / InitDone events map onto
//! [`SourceEvent::Relisting`] / `Applied` / `Listed`.

use std::{fmt::Debug, path::Path};

use futures_util::{Stream, StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use super::{Kind, Object, SourceEvent};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration: not running in a pod and no kubeconfig found ({0}); \
         set source.kubeconfig"
    )]
    Infer(kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A client from `kubeconfig`, or from the in-cluster service account (or
/// `$KUBECONFIG`) when none is given.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// Watches everything the agent reads and sends it as source events until
/// the receiver is dropped. Watch errors are logged and retried with
/// backoff; the last state stays in use meanwhile.
pub async fn run(client: Client, node: String, events: mpsc::Sender<SourceEvent>) {
    let pods = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let all = watcher::Config::default;
    let streams: Vec<BoxStream<'static, Result<SourceEvent, watcher::Error>>> = vec![
        watch(
            Api::<Node>::all(client.clone()),
            all(),
            Kind::Node,
            Object::Node,
        ),
        watch(
            Api::<Pod>::all(client.clone()),
            pods,
            Kind::Pod,
            Object::Pod,
        ),
        watch(
            Api::<Namespace>::all(client.clone()),
            all(),
            Kind::Namespace,
            Object::Namespace,
        ),
        watch(
            Api::<Service>::all(client.clone()),
            all(),
            Kind::Service,
            Object::Service,
        ),
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            all(),
            Kind::EndpointSlice,
            Object::EndpointSlice,
        ),
        watch(
            Api::<NetworkPolicy>::all(client),
            all(),
            Kind::NetworkPolicy,
            Object::NetworkPolicy,
        ),
    ];
    let mut merged = futures_util::stream::select_all(streams);
    while let Some(item) = merged.next().await {
        match item {
            Ok(event) => {
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Err(error) => warn!("Kubernetes watch: {error}; retrying"),
        }
    }
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(Box<K>) -> Object,
) -> BoxStream<'static, Result<SourceEvent, watcher::Error>>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher(api, config).default_backoff().map(move |event| {
        event.map(|event| match event {
            watcher::Event::Init => SourceEvent::Relisting(kind),
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                SourceEvent::Applied(wrap(Box::new(object)))
            }
            watcher::Event::Delete(object) => SourceEvent::Deleted(wrap(Box::new(object))),
            watcher::Event::InitDone => SourceEvent::Listed(kind),
        })
    });
    boxed(stream)
}

fn boxed<S>(stream: S) -> BoxStream<'static, S::Item>
where
    S: Stream + Send + 'static,
{
    stream.boxed()
}
