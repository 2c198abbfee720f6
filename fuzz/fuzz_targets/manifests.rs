//! The `manifests` source: a file of Kubernetes YAML as anyone could write
//! it, parsed by the agent's parser, and the objects that parse taken
//! through what the agent derives from them: this node, its pods and their
//! identity labels, the service catalog, and the NetworkPolicies.

#![no_main]

use fleetnet_agent::{
    mesh::identity::labels_hash,
    services::catalog::Catalog,
    source::{Kind, manifests::parse_documents, state::SourceState},
};
use fleetnet_policy::{
    compile::PeerLabels, identity::CLUSTER_LABEL, rules::Policy, set::PolicySet,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objects) = parse_documents(text) else {
        return;
    };
    let state = SourceState::listed(objects);
    let _ = state.node_info("n1");
    for pod in state
        .node_pods("n1", "c1", fleetnet_agent::config::ExportMode::All)
        .values()
    {
        let _ = labels_hash(&pod.identity_labels);
        let peer = PeerLabels::from_identity(&pod.identity_labels, "c1");
        assert_eq!(peer.pod.get(CLUSTER_LABEL).map(String::as_str), Some("c1"));
    }
    let _ = Catalog::from_objects(
        state
            .objects(Kind::Service)
            .chain(state.objects(Kind::EndpointSlice)),
    );
    for policy in state.policies() {
        if let Ok(parsed) = Policy::parse(policy, "c1") {
            let _ = parsed.cidrs().count();
        }
    }
    let mut policies = PolicySet::default();
    policies.update(state.policies(), "c1");
    let _ = (policies.cidrs(), policies.invalid(), policies.len());
});
