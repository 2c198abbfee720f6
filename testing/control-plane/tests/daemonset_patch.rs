//! A fleet revision's agent written into the agent's DaemonSet through the
//! Kubernetes API (the HTTP server speaking its wire format, see
//! testing/harness/src/kube_api.rs), authorized by exactly the rules in
//! manifests/base/rbac.yaml: the agent's watchers still list and watch,
//! it reads and merge-patches its own DaemonSet, conditional on the
//! resourceVersion read, and nothing else.

use fleetnet_agent::{
    config::DaemonSetSettings,
    daemonset::{
        Target,
        rewrite::{BASE_IMAGE_ANNOTATION, CHECKSUM_ANNOTATION},
    },
    source::{self, state::SourceState},
};
use fleetnet_fleet::model::AgentSpec;
use fleetnet_testing::kube_api::{FakeApiServer, Grant};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NAMESPACE: &str = "fleetnet-system";
const PATH: &str = "/apis/apps/v1/namespaces/fleetnet-system/daemonsets/fleetnet-agent";

/// The ClusterRole's and the Role's rules of manifests/base/rbac.yaml
/// (kustomize puts the Role in the fleetnet-system namespace).
fn grants() -> Vec<Grant> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/base/rbac.yaml"),
    )
    .unwrap();
    let strings = |value: &serde_yaml::Value| -> Vec<String> {
        value
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let mut grants = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object = <serde_yaml::Value as serde::Deserialize>::deserialize(document).unwrap();
        let namespace = match object["kind"].as_str() {
            Some("ClusterRole") => None,
            Some("Role") => Some(NAMESPACE.to_string()),
            _ => continue,
        };
        for rule in object["rules"].as_sequence().unwrap() {
            grants.push(Grant {
                namespace: namespace.clone(),
                api_groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                resource_names: strings(&rule["resourceNames"]),
                verbs: strings(&rule["verbs"]),
            });
        }
    }
    assert!(grants.len() >= 4, "rbac.yaml read: {grants:?}");
    grants
}

fn daemonset(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": "fleetnet-agent"}},
            "template": {
                "metadata": {"labels": {"app": "fleetnet-agent"}},
                "spec": {"containers": [{
                    "name": "agent", "image": "ghcr.io/fleetnet/fleetnet:0.1.0",
                    "env": [{"name": "FLEETNET_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                }]},
            },
        },
    })
}

#[test]
fn the_leader_patches_its_own_daemonset_and_nothing_else() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = FakeApiServer::start().await.unwrap();
        let kubeconfig = std::env::temp_dir().join(format!("fleetnet-kubeconfig-ds-{}", std::process::id()));
        server.write_kubeconfig(&kubeconfig).unwrap();
        server.apply(daemonset("fleetnet-agent"));
        server.apply(daemonset("kube-proxy"));
        server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.1.1.0/24"]}, "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.11"}]}}));
        server.authorize_with(grants());

        // The watchers still get what they need under these rules.
        let client = source::kube::client(Some(&kubeconfig)).await.unwrap();
        let (tx, mut events) = mpsc::channel(256);
        tokio::spawn(source::kube::run(client.clone(), "n1".into(), tx));
        let mut state = SourceState::default();
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while !(state.synced() && state.node_info("n1").is_some()) {
                state.apply(events.recv().await.expect("source stopped"));
            }
        })
        .await
        .expect("the kube source lists under the agent's RBAC");

        let target = Target::Kube {
            client: client.clone(),
            daemonset: DaemonSetSettings::default(),
        };
        let spec: AgentSpec = serde_yaml::from_str(
            "{ image: 'ghcr.io/fleetnet/fleetnet:0.2.0', settings: { bpf: { ipcache-max-entries: 4096 } } }",
        )
        .unwrap();
        let before = server.requests().len();
        assert_eq!(
            target.write(Some(&spec)).await.unwrap().as_deref(),
            Some("ghcr.io/fleetnet/fleetnet:0.2.0")
        );
        let daemonset_requests = |from: usize| -> Vec<String> {
            server.requests()[from..]
                .iter()
                .filter(|r| r.contains("/daemonsets"))
                .cloned()
                .collect()
        };
        let requests = daemonset_requests(before);
        assert_eq!(
            requests,
            [format!("GET {PATH} HTTP/1.1"), format!("PATCH {PATH}? HTTP/1.1")],
            "one read, one merge patch"
        );
        let written = server.get("DaemonSet", NAMESPACE, "fleetnet-agent").unwrap();
        let container = &written["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "ghcr.io/fleetnet/fleetnet:0.2.0");
        let env = container["env"].as_array().unwrap();
        assert_eq!(env[0]["name"], "FLEETNET_NODE_NAME", "the pod's own variables stay");
        assert_eq!(env[1], json!({"name": "FLEETNET_IMAGE", "value": "ghcr.io/fleetnet/fleetnet:0.2.0"}));
        assert_eq!(env[2]["value"], r#"{"bpf":{"ipcache-max-entries":4096}}"#);
        assert_eq!(
            written["metadata"]["annotations"][BASE_IMAGE_ANNOTATION],
            "ghcr.io/fleetnet/fleetnet:0.1.0"
        );
        assert_eq!(
            written["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
                .as_str()
                .map(str::len),
            Some(64)
        );
        assert_eq!(
            written["spec"]["template"]["metadata"]["labels"]["app"], "fleetnet-agent",
            "the merge patch keeps what it does not name"
        );

        // Again: nothing to do, nothing patched.
        let again = server.requests().len();
        assert_eq!(target.write(Some(&spec)).await.unwrap(), None);
        assert_eq!(daemonset_requests(again), [format!("GET {PATH} HTTP/1.1")]);

        // A rollback to a revision without an agent: the DaemonSet's own.
        assert_eq!(
            target.write(None).await.unwrap().as_deref(),
            Some("ghcr.io/fleetnet/fleetnet:0.1.0")
        );
        let restored = server.get("DaemonSet", NAMESPACE, "fleetnet-agent").unwrap();
        let mut expected = daemonset("fleetnet-agent");
        expected["metadata"]["resourceVersion"] = restored["metadata"]["resourceVersion"].clone();
        expected["spec"]["template"]["metadata"]["annotations"] = json!({});
        expected["metadata"]["annotations"] = json!({});
        assert_eq!(restored, expected, "as it was, its annotations emptied");

        // Another DaemonSet is out of reach: the API server says so.
        let other = Target::Kube {
            client,
            daemonset: DaemonSetSettings {
                name: "kube-proxy".into(),
                ..DaemonSetSettings::default()
            },
        };
        let error = other.write(Some(&spec)).await.unwrap_err();
        assert!(
            error.starts_with("cannot read DaemonSet fleetnet-system/kube-proxy: ")
                && error.contains("forbidden"),
            "{error}"
        );
        let untouched = server.get("DaemonSet", NAMESPACE, "kube-proxy").unwrap();
        assert_eq!(
            untouched["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/fleetnet/fleetnet:0.1.0"
        );
        std::fs::remove_file(&kubeconfig).unwrap();
    });
}
