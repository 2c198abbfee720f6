//! Labels, annotations and label selectors as anyone who can edit a
//! Kubernetes object could write them, read the way the agent reads them.
//!
//! The input is lines (lossy UTF-8). Before a `---` line, `KEY=VALUE`
//! lines are the labels and annotations of a Service, its EndpointSlice,
//! a Namespace and a Pod on this node. After it, `KEY=VALUE` lines are a
//! selector's `matchLabels` and `?KEY OPERATOR VALUE...` lines its
//! `matchExpressions`.
//!
//! Checked besides "no panic": a Service's global settings are what the
//! annotations say, a pod's identity carries this cluster's label and
//! its namespace's labels whatever its own labels claim, and a selector
//! made of an object's own labels matches it.

#![no_main]

use std::collections::BTreeMap;

use fleetnet_agent::{
    mesh::identity::labels_hash,
    services::{annotations, catalog::Catalog},
    source::{Kind, Object, SourceEvent, state::SourceState},
};
use fleetnet_policy::{
    compile::{NAMESPACE_NAME_LABEL, PeerLabels},
    identity::{CLUSTER_LABEL, Labels},
    rules::CILIUM_CLUSTER_LABEL,
    selector::Selector,
};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, PodSpec, PodStatus, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (labels, selector) = parse(&text);
    service(&labels);
    pod(&labels);
    select(&labels, &selector);
});

fn parse(text: &str) -> (Labels, LabelSelector) {
    let mut labels = Labels::new();
    let mut selector = LabelSelector::default();
    let mut in_selector = false;
    for line in text.lines() {
        if line == "---" {
            in_selector = true;
        } else if let Some(expression) = line.strip_prefix('?').filter(|_| in_selector) {
            let mut words = expression.split(' ');
            let key = words.next().unwrap_or_default().to_string();
            let operator = words.next().unwrap_or_default().to_string();
            let values: Vec<String> = words.map(str::to_string).collect();
            selector
                .match_expressions
                .get_or_insert_with(Vec::new)
                .push(LabelSelectorRequirement {
                    key,
                    operator,
                    values: (!values.is_empty()).then_some(values),
                });
        } else {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            let map = if in_selector {
                selector.match_labels.get_or_insert_with(BTreeMap::new)
            } else {
                &mut labels
            };
            map.insert(key.to_string(), value.to_string());
        }
    }
    (labels, selector)
}

fn meta(name: &str, labels: &Labels) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("shop".into()),
        labels: Some(labels.clone()),
        annotations: Some(labels.clone()),
        ..ObjectMeta::default()
    }
}

/// A Service annotated (and labelled) with the input, and a slice of it.
fn service(labels: &Labels) {
    let expected = annotations::global(Some(labels));
    let service = Service {
        metadata: meta("web", labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("172.20.0.10".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let mut slice_labels = labels.clone();
    slice_labels
        .entry("kubernetes.io/service-name".into())
        .or_insert_with(|| "web".into());
    let slice = EndpointSlice {
        metadata: meta("web-1", &slice_labels),
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.1.1.11".into()],
            node_name: Some("n1".into()),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..EndpointPort::default()
        }]),
    };
    let objects = [
        Object::Service(Box::new(service)),
        Object::EndpointSlice(Box::new(slice)),
    ];
    let catalog = Catalog::from_objects(objects.iter());
    let local = catalog
        .services
        .values()
        .next()
        .expect("the service has a VIP");
    match expected {
        Ok(global) => assert_eq!((local.global, local.warning.as_deref()), (global, None)),
        Err(warning) => {
            assert_eq!(local.global, None, "a wrong annotation is not global");
            assert_eq!(local.warning.as_deref(), Some(warning.as_str()));
        }
    }
}

/// A pod of this node and its namespace, both labelled with the input.
fn pod(labels: &Labels) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let pod = Pod {
        metadata: meta("web-0", labels),
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some("10.1.1.11".into()),
            ..PodStatus::default()
        }),
    };
    let mut state = SourceState::default();
    for kind in Kind::ALL {
        state.apply(SourceEvent::Relisting(kind));
    }
    state.apply(SourceEvent::Applied(Object::Namespace(Box::new(namespace))));
    state.apply(SourceEvent::Applied(Object::Pod(Box::new(pod))));
    for kind in Kind::ALL {
        state.apply(SourceEvent::Listed(kind));
    }
    let pods = state.node_pods("n1", "c1", fleetnet_agent::config::ExportMode::All);
    assert_eq!(pods.len(), 1, "the pod is on this node");
    for pod in pods.values() {
        assert_eq!(
            pod.identity_labels.get(CLUSTER_LABEL).map(String::as_str),
            Some("c1")
        );
        let _ = labels_hash(&pod.identity_labels);
        let peer = PeerLabels::from_identity(&pod.identity_labels, "c1");
        assert_eq!(peer.pod.get(CLUSTER_LABEL).map(String::as_str), Some("c1"));
        assert_eq!(peer.namespace, "shop");
        // Namespace selectors see the namespace's labels, never a pod's.
        let mut namespace_labels = labels.clone();
        namespace_labels.insert(NAMESPACE_NAME_LABEL.into(), "shop".into());
        assert_eq!(peer.namespace_labels, namespace_labels);
    }
}

/// The selector, as a policy peer reads it, against the labels.
fn select(labels: &Labels, selector: &LabelSelector) {
    if let Ok(parsed) = Selector::parse(selector) {
        let _ = parsed.matches(labels);
        let peer = parsed.rename_key(CILIUM_CLUSTER_LABEL, CLUSTER_LABEL);
        let peer = if peer.mentions(CLUSTER_LABEL) {
            peer
        } else {
            peer.and_equals(CLUSTER_LABEL, "c1")
        };
        let _ = peer.matches(labels);
    }
    let own = Selector::parse(&LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    })
    .expect("matchLabels alone always parse");
    assert!(own.matches(labels), "a selector of its own labels matches");
}
