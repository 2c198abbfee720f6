//! The policy compiler at fleet scale: 1,000 clusters of 10 identities
//! each, 100 local endpoints, policies that pick peers by cluster and by
//! label across all clusters. Reports the time of one full compile and the
//! policy map entries it produces per endpoint.

use std::{collections::BTreeMap, time::Instant};

use dataplane_common::identity;
use fleetnet_agent::source::{Object, manifests::parse_documents};
use fleetnet_benches::{self as bench, Figure};
use fleetnet_policy::{
    compile::{Compiled, PeerLabels, Subject, Universe, compile},
    groups::PolicyGroups,
    identity::{CLUSTER_LABEL, NAMESPACE_LABEL},
    rules::Policy,
    set::PolicySet,
};

const CLUSTERS: u16 = 1_000;
const APPS: u16 = 10;
const ENDPOINTS: u16 = 100;
const RUNS: usize = 20;
const GROUP: &str = "Policy compiler (1,000 clusters x 10 identities, 100 endpoints)";

fn labels(cluster: u16, app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), app.to_string()),
        (NAMESPACE_LABEL.to_string(), "default".to_string()),
        (CLUSTER_LABEL.to_string(), format!("c{cluster}")),
    ])
}

fn app(index: u16) -> String {
    if index == 0 {
        "frontend".into()
    } else {
        format!("app-{index}")
    }
}

fn policies() -> PolicySet {
    let mut yaml = String::new();
    for k in 0..APPS {
        yaml += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{ name: backend-{k}, namespace: default }}\n\
             spec: {{ podSelector: {{ matchLabels: {{ app: backend-{k} }} }}, ingress: [ \
             {{ from: [ {{ podSelector: {{ matchLabels: {{ app: frontend }}, matchExpressions: [ \
             {{ key: fleetnet.io/cluster, operator: In, values: [c2, c3, c4, c5, c6, c7, c8, c9, c10, c11] }} ] }} }}, \
             {{ podSelector: {{ matchLabels: {{ app: frontend }} }} }} ], ports: [ {{ port: http }} ] }} ] }}\n"
        );
    }
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: { name: frontends-everywhere, namespace: default }\n\
             spec: { podSelector: {}, ingress: [ { from: [ { podSelector: { matchLabels: { app: frontend }, \
             matchExpressions: [ { key: fleetnet.io/cluster, operator: Exists } ] } } ], \
             ports: [ { port: 9090 } ] } ] }\n";
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: { name: dns-only, namespace: default }\n\
             spec: { podSelector: {}, policyTypes: [Egress], egress: [ { ports: [ { port: 53, protocol: UDP } ] } ] }\n";
    let objects = parse_documents(&yaml).expect("the bench's policies parse");
    let policies = objects.iter().filter_map(|object| match object {
        Object::NetworkPolicy(policy) => Some(policy.as_ref()),
        _ => None,
    });
    let mut set = PolicySet::default();
    set.update(policies, "c1");
    assert_eq!(set.len(), usize::from(APPS) + 2);
    set
}

fn main() {
    let set = policies();
    let mut universe = Universe::default();
    for cluster in 1..=CLUSTERS {
        for index in 0..APPS {
            let id = identity::make(cluster, 256 + index);
            let owner = format!("c{cluster}");
            universe.identities.insert(
                id,
                PeerLabels::from_identity(&labels(cluster, &app(index)), &owner),
            );
        }
    }
    let endpoints: Vec<Subject> = (0..ENDPOINTS)
        .map(|n| Subject {
            policy_id: None,
            labels: PeerLabels::from_identity(&labels(1, &format!("backend-{}", n % APPS)), "c1"),
            named_ports: [("http".to_string(), (6, 8080))].into(),
        })
        .collect();
    let policies: Vec<&Policy> = set.policies().collect();

    let mut times = Vec::new();
    let mut groups = PolicyGroups::default();
    let mut compiled = Compiled::default();
    for _ in 0..bench::size(RUNS, 2) {
        let started = Instant::now();
        compiled = compile(&policies, &endpoints, &universe, &mut groups);
        times.push(started.elapsed());
    }
    times.sort();
    let mut per_group: BTreeMap<u16, usize> = BTreeMap::new();
    for (key, _) in &compiled.entries {
        *per_group.entry(key.policy_id).or_default() += 1;
    }
    let per_endpoint: Vec<usize> = compiled
        .assignments
        .iter()
        .map(|a| per_group.get(&a.policy_id).copied().unwrap_or(0))
        .collect();
    let median = times[times.len() / 2];
    Figure::new(
        GROUP,
        "one full compile, median",
        median.as_secs_f64() * 1000.0,
        "ms",
    )
    .record();
    let separate = per_endpoint.iter().sum::<usize>() as f64;
    Figure::new(
        GROUP,
        "policy map entries (groups shared by endpoints)",
        compiled.entries.len() as f64,
        "entries",
    )
    .versus(separate, "one entry set per endpoint")
    .record();
    println!(
        "policy compile: {} identities ({CLUSTERS} clusters), {} policies, {ENDPOINTS} endpoints",
        universe.identities.len(),
        policies.len()
    );
    println!("  one full compile: median {median:?} (of {})", times.len());
    println!(
        "  entries an endpoint uses: {} to {}",
        per_endpoint.iter().min().unwrap(),
        per_endpoint.iter().max().unwrap()
    );
    println!(
        "  policy map entries: {} in {} groups (one set per endpoint would be {})",
        compiled.entries.len(),
        groups.len(),
        per_endpoint.iter().sum::<usize>()
    );
}
