//! The `kube` source against an HTTP server speaking the Kubernetes API's
//! list and watch wire format (see testing/harness/src/kube_api.rs; no real API
//! server exists on these machines): initial list, watch from the list's
//! resourceVersion, resuming from bookmarks when the server ends a watch,
//! and a re-list after 410 Gone that forgets what vanished meanwhile.

use std::{net::Ipv4Addr, time::Duration};

use fleetnet_agent::source::{self, state::SourceState};
use fleetnet_testing::kube_api::FakeApiServer;
use serde_json::json;
use tokio::sync::mpsc;

fn pod(name: &str, node: &str, ip: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": ip, "phase": "Running"},
    })
}

/// Applies source events until `done` holds for the local state.
async fn until(
    events: &mut mpsc::Receiver<source::SourceEvent>,
    state: &mut SourceState,
    what: &str,
    done: impl Fn(&SourceState) -> bool,
) {
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        while !done(state) {
            state.apply(events.recv().await.expect("source stopped"));
        }
    })
    .await;
    assert!(result.is_ok(), "timed out waiting for: {what}");
}

fn pods_on_n1(state: &SourceState) -> Vec<Ipv4Addr> {
    state
        .node_pods("n1", "c1", fleetnet_agent::config::ExportMode::All)
        .into_keys()
        .collect()
}

#[test]
fn the_kube_source_lists_watches_resumes_and_relists() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = FakeApiServer::start().await.unwrap();
        let kubeconfig = std::env::temp_dir().join(format!("fleetnet-kubeconfig-{}", std::process::id()));
        server.write_kubeconfig(&kubeconfig).unwrap();
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "blue"}}}));
        server.apply(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"podCIDRs": ["10.1.1.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.11"}]},
        }));
        server.apply(pod("web", "n1", "10.1.1.11"));
        server.apply(pod("other-node", "n2", "10.1.2.11"));

        let client = source::kube::client(Some(&kubeconfig)).await.unwrap();
        let (tx, mut events) = mpsc::channel(256);
        tokio::spawn(source::kube::run(client, "n1".into(), tx));
        let mut state = SourceState::default();
        until(&mut events, &mut state, "the initial listing", |s| s.synced() && !pods_on_n1(s).is_empty()).await;
        assert_eq!(pods_on_n1(&state), vec![Ipv4Addr::new(10, 1, 1, 11)]);
        assert_eq!(state.node_info("n1").unwrap().ip, Ipv4Addr::new(198, 18, 1, 11));
        let web = &state.node_pods("n1", "c1", fleetnet_agent::config::ExportMode::All)[&Ipv4Addr::new(10, 1, 1, 11)];
        assert_eq!(web.identity_labels["io.cilium.k8s.namespace.labels.team"], "blue");
        let requests = server.requests();
        let pod_list = requests.iter().find(|r| r.contains("/api/v1/pods?") && !r.contains("watch=true")).unwrap();
        assert!(pod_list.contains("fieldSelector=spec.nodeName%3Dn1"), "{pod_list}");

        // Changes arrive through the watch.
        server.apply(pod("api", "n1", "10.1.1.12"));
        until(&mut events, &mut state, "a pod added", |s| pods_on_n1(s).len() == 2).await;
        server.apply(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"]},
        }));
        until(&mut events, &mut state, "a NetworkPolicy", |s| s.policies().count() == 1).await;
        let policy = state.policies().next().unwrap();
        assert_eq!(policy.metadata.name.as_deref(), Some("deny"));
        server.delete("Pod", "shop", "web");
        until(&mut events, &mut state, "a pod deleted", |s| pods_on_n1(s) == [Ipv4Addr::new(10, 1, 1, 12)]).await;

        // The server ends watches after a few seconds; the watcher resumes
        // from the last bookmark without listing again.
        tokio::time::sleep(Duration::from_secs(4)).await;
        server.apply(pod("late", "n1", "10.1.1.13"));
        until(&mut events, &mut state, "a pod added after the watch was resumed", |s| pods_on_n1(s).len() == 2).await;
        let pod_lists = |server: &FakeApiServer| {
            server.requests().iter().filter(|r| r.contains("/api/v1/pods?") && !r.contains("watch=true")).count()
        };
        let pod_watches = server.requests().iter().filter(|r| r.contains("/api/v1/pods?") && r.contains("watch=true")).count();
        assert_eq!(pod_lists(&server), 1, "resumed without a new list");
        assert!(pod_watches >= 2, "the watch was resumed ({pod_watches} watch requests)");
        assert!(server.requests().iter().any(|r| r.contains("allowWatchBookmarks=true")));

        // A pod vanishes without an event, then history is compacted: 410
        // Gone, a new listing, and the vanished pod is forgotten.
        server.delete_silently("Pod", "shop", "late");
        server.compact();
        until(&mut events, &mut state, "the re-list after 410 Gone", |s| {
            pods_on_n1(s) == [Ipv4Addr::new(10, 1, 1, 12)]
        })
        .await;
        assert_eq!(pod_lists(&server), 2, "exactly one re-list");
        let _ = std::fs::remove_file(&kubeconfig);
    });
}

#[test]
fn a_missing_kubeconfig_is_one_clear_sentence() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = runtime
        .block_on(source::kube::client(Some(std::path::Path::new(
            "/nonexistent/kubeconfig",
        ))))
        .err()
        .expect("no client without a kubeconfig");
    let message = error.to_string();
    assert!(
        message.starts_with("cannot read kubeconfig /nonexistent/kubeconfig:"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
}
