//! The compiler over a table of policies: each row is NetworkPolicy specs
//! (in namespace `shop` of cluster `a`) and what the policy map should hold
//! for one pod, `shop/backend` of cluster `a`; then how pods share groups.

use std::collections::BTreeMap;

use dataplane_common::{Direction, EndpointInfo, PolicyKey, identity::make};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::identity::{CLUSTER_LABEL, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use crate::{
    compile::{PeerLabels, Subject, Universe, compile, enforcement},
    groups::PolicyGroups,
    rules::Policy,
    selector::Labels,
    set::PolicySet,
};

/// The policy group the endpoint has (kept when it is free).
const GROUP: u16 = 7;
const IN: u16 = EndpointInfo::INGRESS_ENFORCED;
const EG: u16 = EndpointInfo::EGRESS_ENFORCED;

/// (id, cluster that owns it, namespace, namespace labels, pod labels, named ports).
type IdentityRow = (
    u32,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, u8, u16)],
);

const IDENTITIES: &[IdentityRow] = &[
    (make(1, 256), "a", "shop", "team=red", "app=frontend", &[]),
    (make(1, 257), "a", "shop", "team=red", "app=backend", &[]),
    (make(1, 258), "a", "other", "team=blue", "app=frontend", &[]),
    (
        make(1, 259),
        "a",
        "shop",
        "team=red",
        "app=db",
        &[("pg", 6, 5433)],
    ),
    (make(2, 256), "b", "shop", "team=red", "app=frontend", &[]),
    (
        make(2, 257),
        "b",
        "shop",
        "team=red",
        "app=db",
        &[("pg", 6, 5432), ("pg", 6, 6432)],
    ),
    (make(3, 256), "c", "shop", "team=red", "app=frontend", &[]),
    // Cluster c minting an identity that claims to be cluster b's.
    (
        make(3, 257),
        "c",
        "shop",
        "team=red",
        "app=frontend,fleetnet.io/cluster=b",
        &[],
    ),
];

fn name_of(id: u32) -> &'static str {
    match id {
        0 => "any",
        id if id == make(1, 256) => "a/frontend",
        id if id == make(1, 257) => "a/backend",
        id if id == make(1, 258) => "a/other-frontend",
        id if id == make(1, 259) => "a/db",
        id if id == make(2, 256) => "b/frontend",
        id if id == make(2, 257) => "b/db",
        id if id == make(3, 256) => "c/frontend",
        id if id == make(3, 257) => "c/fake-b-frontend",
        id if id == make(1, 1) => "a/unexported",
        id if id == make(2, 1) => "b/unexported",
        _ => "?",
    }
}

fn pairs(text: &str) -> Labels {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn identity_labels(row: &IdentityRow) -> Labels {
    let (_, cluster, namespace, ns_labels, pod_labels, _) = *row;
    let mut labels = pairs(pod_labels);
    labels.entry(CLUSTER_LABEL.into()).or_insert(cluster.into());
    labels.insert(NAMESPACE_LABEL.into(), namespace.into());
    for (k, v) in pairs(ns_labels) {
        labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
    }
    labels
}

fn universe(policies: &PolicySet) -> Universe {
    let mut universe = Universe::default();
    for row in IDENTITIES {
        let labels = PeerLabels::from_identity(&identity_labels(row), row.1);
        universe.identities.insert(row.0, labels);
        for (name, protocol, port) in row.5 {
            universe
                .named_ports
                .entry(row.0)
                .or_default()
                .entry(name.to_string())
                .or_default()
                .insert((*protocol, *port));
        }
    }
    // The pods clusters a and b do not export, known by cluster only.
    for (cluster_id, name) in [(1, "a"), (2, "b")] {
        universe.identities.insert(
            dataplane_common::identity::cluster_pods(cluster_id),
            PeerLabels::unexported_pod_of(name),
        );
    }
    assert_eq!(universe.cidrs.sync(&policies.cidrs()), 0);
    universe
}

fn endpoint() -> Subject {
    let row = &IDENTITIES[1];
    Subject {
        policy_id: Some(GROUP),
        labels: PeerLabels::from_identity(&identity_labels(row), "a"),
        named_ports: [
            ("http".to_string(), (6, 8080)),
            ("dns".to_string(), (17, 53)),
        ]
        .into(),
    }
}

fn policy_set(specs: &[&str], namespace: &str) -> PolicySet {
    let objects: Vec<NetworkPolicy> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let spec = spec.replace('\n', "\n  ");
            let text = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{ name: p{i}, namespace: {namespace} }}\nspec:\n  {spec}"
            );
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"))
        })
        .collect();
    let mut set = PolicySet::default();
    set.update(&objects, "a");
    assert_eq!(set.len(), specs.len(), "every policy of the row parses");
    set
}

/// One entry as `direction peer protocol:ports`.
fn describe(key: &PolicyKey, bits: u32, universe: &Universe) -> String {
    assert_eq!(key.policy_id, GROUP);
    let direction = if key.direction == Direction::Ingress as u8 {
        "in"
    } else {
        "eg"
    };
    let id = u32::from_be_bytes(key.identity);
    let cidrs: BTreeMap<u32, String> = universe
        .cidrs
        .iter()
        .map(|(cidr, id)| (id, cidr.to_string()))
        .collect();
    let peer = cidrs.get(&id).map_or(name_of(id), String::as_str);
    let protocol = match key.protocol {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "?",
    };
    let ports = match bits {
        PolicyKey::FIXED_BITS => return format!("{direction} {peer} *"),
        PolicyKey::PROTOCOL_BITS => "*".to_string(),
        bits => {
            let first = u16::from_be_bytes(key.port);
            let last = u32::from(first) + (1u32 << (PolicyKey::FULL_BITS - bits)) - 1;
            if u32::from(first) == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        }
    };
    format!("{direction} {peer} {protocol}:{ports}")
}

fn compiled(specs: &[&str], namespace: &str) -> (u16, Vec<String>) {
    let set = policy_set(specs, namespace);
    let universe = universe(&set);
    let policies: Vec<&Policy> = set.policies().collect();
    let endpoint = endpoint();
    let out = compile(
        &policies,
        std::slice::from_ref(&endpoint),
        &universe,
        &mut PolicyGroups::default(),
    );
    let assignment = out.assignments[0];
    assert_eq!(
        assignment.flags,
        enforcement(set.policies(), &endpoint.labels),
        "the flags an endpoint is attached with before a compile agree with the compiler's"
    );
    let expected_group = if assignment.flags == 0 { 0 } else { GROUP };
    assert_eq!(assignment.policy_id, expected_group);
    let entries = out
        .entries
        .iter()
        .map(|(key, bits)| describe(key, *bits, &universe))
        .collect();
    (assignment.flags, entries)
}

const BACKEND: &str = "podSelector: { matchLabels: { app: backend } }";

#[test]
fn the_policy_table() {
    let cases: &[(&str, &[&str], u16, &[&str])] = &[
        ("no policy: allow all, nothing enforced", &[], 0, &[]),
        (
            "selected with no rules: default deny ingress",
            &[BACKEND],
            IN,
            &[],
        ),
        (
            "empty podSelector selects every pod of the namespace",
            &["podSelector: {}\npolicyTypes: [Ingress]"],
            IN,
            &[],
        ),
        (
            "a policy for other pods leaves this one alone",
            &["podSelector: { matchLabels: { app: db } }"],
            0,
            &[],
        ),
        (
            "a peer selector without the cluster label means this cluster",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ podSelector: {{ matchLabels: {{ app: frontend }} }} }} ] }} ]"
            )],
            IN,
            &["in a/frontend *"],
        ),
        (
            "the cluster label picks a cluster; identities cannot claim another's",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ podSelector: {{ matchLabels: {{ app: frontend, fleetnet.io/cluster: b }} }} }} ], ports: [ {{ port: 80 }} ] }} ]"
            )],
            IN,
            &["in b/frontend tcp:80"],
        ),
        (
            "Cilium's cluster label is an alias",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ podSelector: {{ matchLabels: {{ app: frontend, io.cilium.k8s.policy.cluster: c }} }} }} ] }} ]"
            )],
            IN,
            &["in c/frontend *", "in c/fake-b-frontend *"],
        ),
        (
            "cluster label in matchExpressions",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ podSelector: {{ matchLabels: {{ app: frontend }}, matchExpressions: [ {{ key: fleetnet.io/cluster, operator: In, values: [a, b] }} ] }} }} ] }} ]"
            )],
            IN,
            &["in a/frontend *", "in b/frontend *"],
        ),
        (
            "namespaceSelector alone: every pod of matching namespaces here",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ namespaceSelector: {{ matchLabels: {{ team: blue }} }} }} ] }} ]"
            )],
            IN,
            &["in a/other-frontend *"],
        ),
        (
            "both selectors in one peer: pods in those namespaces",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ namespaceSelector: {{}}, podSelector: {{ matchLabels: {{ app: frontend }} }} }} ] }} ]"
            )],
            IN,
            &["in a/frontend *", "in a/other-frontend *"],
        ),
        (
            "a whole cluster by its label: its pods it does not export too",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ namespaceSelector: {{}}, podSelector: {{ matchLabels: {{ fleetnet.io/cluster: b }} }} }} ] }} ]"
            )],
            IN,
            &["in b/frontend *", "in b/db *", "in b/unexported *"],
        ),
        (
            "pod labels of another cluster match only the pods it exports",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ namespaceSelector: {{}}, podSelector: {{ matchLabels: {{ app: frontend, fleetnet.io/cluster: b }} }} }} ] }} ]"
            )],
            IN,
            &["in b/frontend *"],
        ),
        (
            "namespace labels never match a pod not exported (its namespace is unknown)",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ namespaceSelector: {{ matchLabels: {{ team: red }} }}, podSelector: {{ matchLabels: {{ fleetnet.io/cluster: b }} }} }} ] }} ]"
            )],
            IN,
            &["in b/frontend *", "in b/db *"],
        ),
        (
            "every namespace of this cluster: its pods known by CIDR only too",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ namespaceSelector: {{}} }} ] }} ]"
            )],
            IN,
            &[
                "in a/frontend *",
                "in a/backend *",
                "in a/other-frontend *",
                "in a/db *",
                "in a/unexported *",
            ],
        ),
        (
            "the namespace name label",
            &[&format!(
                "{BACKEND}\ningress: [ {{ from: [ {{ namespaceSelector: {{ matchLabels: {{ kubernetes.io/metadata.name: other }} }}, podSelector: {{}} }} ] }} ]"
            )],
            IN,
            &["in a/other-frontend *"],
        ),
        (
            "no from: any peer, on the ports given",
            &[&format!(
                "{BACKEND}\ningress: [ {{ ports: [ {{ protocol: UDP, port: 53 }}, {{ protocol: SCTP }} ] }} ]"
            )],
            IN,
            &["in any sctp:*", "in any udp:53"],
        ),
        (
            "a rule with neither from nor ports allows everything",
            &[&format!("{BACKEND}\ningress: [ {{}} ]")],
            IN,
            &["in any *"],
        ),
        (
            "port ranges become prefixes",
            &[&format!(
                "{BACKEND}\ningress: [ {{ ports: [ {{ port: 8080, endPort: 8083 }}, {{ port: 1000, endPort: 1003 }}, {{ port: 30000, endPort: 30001 }} ] }} ]"
            )],
            IN,
            &[
                "in any tcp:1000-1003",
                "in any tcp:8080-8083",
                "in any tcp:30000-30001",
            ],
        ),
        (
            "named ports on ingress are this pod's own (name and protocol)",
            &[&format!(
                "{BACKEND}\ningress: [ {{ ports: [ {{ port: http }}, {{ port: dns, protocol: UDP }}, {{ port: dns }}, {{ port: missing }} ] }} ]"
            )],
            IN,
            &["in any tcp:8080", "in any udp:53"],
        ),
        (
            "named ports on egress are the peer's, per identity",
            &[&format!(
                "{BACKEND}\negress: [ {{ to: [ {{ podSelector: {{ matchLabels: {{ app: db }}, matchExpressions: [ {{ key: fleetnet.io/cluster, operator: Exists }} ] }} }} ], ports: [ {{ port: pg }} ] }} ]"
            )],
            IN | EG,
            &["eg a/db tcp:5433", "eg b/db tcp:5432", "eg b/db tcp:6432"],
        ),
        (
            "a named egress port to any peer resolves on every identity",
            &[&format!(
                "{BACKEND}\npolicyTypes: [Egress]\negress: [ {{ ports: [ {{ port: pg }} ] }} ]"
            )],
            EG,
            &["eg a/db tcp:5433", "eg b/db tcp:5432", "eg b/db tcp:6432"],
        ),
        (
            "ipBlock with except: the except prefix has its own identity",
            &[&format!(
                "{BACKEND}\npolicyTypes: [Egress]\negress: [ {{ to: [ {{ ipBlock: {{ cidr: 192.0.2.0/24, except: [192.0.2.128/25] }} }}, {{ ipBlock: {{ cidr: '2001:db8::/32' }} }} ] }} ]"
            )],
            EG,
            &["eg 192.0.2.0/24 *"],
        ),
        (
            "an ipBlock selects the prefixes inside it, except the excepted",
            &[
                &format!(
                    "{BACKEND}\npolicyTypes: [Egress]\negress: [ {{ to: [ {{ ipBlock: {{ cidr: 10.0.0.0/8, except: [10.9.0.0/16] }} }} ] }} ]"
                ),
                &format!(
                    "{BACKEND}\npolicyTypes: [Egress]\negress: [ {{ to: [ {{ ipBlock: {{ cidr: 10.1.0.0/16 }} }} ], ports: [ {{ port: 443 }} ] }} ]"
                ),
            ],
            EG,
            &["eg 10.0.0.0/8 *", "eg 10.1.0.0/16 *"],
        ),
        (
            "policyTypes Egress without rules: deny all egress, ingress open",
            &[&format!("{BACKEND}\npolicyTypes: [Egress]")],
            EG,
            &[],
        ),
        (
            "an egress section without policyTypes covers both directions",
            &[&format!(
                "{BACKEND}\negress: [ {{ to: [ {{ podSelector: {{}} }} ] }} ]"
            )],
            IN | EG,
            &["eg a/frontend *", "eg a/backend *", "eg a/db *"],
        ),
        (
            "policies add up; covered entries are left out",
            &[
                &format!(
                    "{BACKEND}\ningress: [ {{ from: [ {{ podSelector: {{ matchLabels: {{ app: frontend }} }} }} ], ports: [ {{ port: 80 }}, {{ port: 81, protocol: UDP }} ] }} ]"
                ),
                &format!(
                    "{BACKEND}\ningress: [ {{ from: [ {{ podSelector: {{ matchLabels: {{ app: frontend }} }} }} ], ports: [ {{ protocol: UDP }} ] }} ]"
                ),
                &format!("{BACKEND}\ningress: [ {{ ports: [ {{ port: 80, endPort: 95 }} ] }} ]"),
            ],
            IN,
            &["in any tcp:80-95", "in a/frontend udp:*"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, specs, flags, entries) in cases {
        let (got_flags, got) = compiled(specs, "shop");
        let mut want: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let mut got_sorted = got.clone();
        want.sort();
        got_sorted.sort();
        if got_flags != *flags || got_sorted != want {
            failures.push(format!(
                "{name}: flags {got_flags} (want {flags}), entries {got:?} (want {want:?})"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_policy_only_selects_pods_of_its_own_namespace() {
    let (flags, entries) = compiled(&[BACKEND], "other");
    assert_eq!((flags, entries.len()), (0, 0));
}

#[test]
fn invalid_policies_are_refused_with_one_sentence() {
    let cases = [
        (
            "podSelector: { matchExpressions: [ { key: app, operator: Equals, values: [x] } ] }",
            "spec.podSelector: matchExpressions on \"app\": unknown operator \"Equals\" (use In, NotIn, Exists or DoesNotExist)",
        ),
        (
            "podSelector: {}\npolicyTypes: [Inbound]",
            "spec.policyTypes: unknown type \"Inbound\" (use Ingress or Egress)",
        ),
        (
            "podSelector: {}\ningress: [ { from: [ { ipBlock: { cidr: 10.0.0.0/8 }, podSelector: {} } ] } ]",
            "spec.ingress[0]: peer 0: ipBlock cannot be combined with podSelector or namespaceSelector",
        ),
        (
            "podSelector: {}\ningress: [ { from: [ {} ] } ]",
            "spec.ingress[0]: peer 0: needs a podSelector, a namespaceSelector or an ipBlock",
        ),
        (
            "podSelector: {}\negress: [ { to: [ { ipBlock: { cidr: 10.0.0.0/33 } } ] } ]",
            "spec.egress[0]: peer 0: ipBlock: \"10.0.0.0/33\" is not a CIDR such as 10.0.0.0/8",
        ),
        (
            "podSelector: {}\negress: [ { to: [ { ipBlock: { cidr: 10.0.0.0/16, except: [10.1.0.0/24] } } ] } ]",
            "spec.egress[0]: peer 0: ipBlock: except 10.1.0.0/24 is not strictly inside cidr 10.0.0.0/16",
        ),
        (
            "podSelector: {}\ningress: [ { ports: [ { port: 90, endPort: 80 } ] } ]",
            "spec.ingress[0]: port 0: endPort 80 is below port 90",
        ),
        (
            "podSelector: {}\ningress: [ { ports: [ { port: http, endPort: 80 } ] } ]",
            "spec.ingress[0]: port 0: endPort cannot be used with the named port \"http\"",
        ),
        (
            "podSelector: {}\ningress: [ { ports: [ { port: 70000 } ] } ]",
            "spec.ingress[0]: port 0: 70000 is not a port (1-65535)",
        ),
        (
            "podSelector: {}\ningress: [ { ports: [ { protocol: ICMP } ] } ]",
            "spec.ingress[0]: port 0: unknown protocol \"ICMP\" (use TCP, UDP or SCTP)",
        ),
    ];
    for (spec, error) in cases {
        let spec = spec.replace('\n', "\n  ");
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{ name: bad, namespace: shop }}\nspec:\n  {spec}"
        );
        let object: NetworkPolicy = serde_yaml::from_str(&text).unwrap();
        assert_eq!(Policy::parse(&object, "a").unwrap_err(), error);
    }
}

#[test]
fn a_policy_that_stops_parsing_keeps_its_last_valid_version() {
    let parse = |spec: &str| -> NetworkPolicy {
        serde_yaml::from_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{ name: p, namespace: shop }}\nspec: {spec}"
        ))
        .unwrap()
    };
    let good = parse("{ podSelector: { matchLabels: { app: backend } } }");
    let bad = parse("{ podSelector: {}, policyTypes: [Sideways] }");
    let mut set = PolicySet::default();
    assert!(set.update([&good], "a"));
    let before: Vec<Policy> = set.policies().cloned().collect();
    assert!(!set.update([&bad], "a"), "nothing applied changes");
    assert_eq!(set.policies().cloned().collect::<Vec<_>>(), before);
    assert!(
        set.update([], "a"),
        "deleting the object removes the policy"
    );
    assert!(set.is_empty());
    assert!(!set.update([&bad], "a"));
    assert!(set.is_empty(), "a policy that never parsed is not applied");
}

#[test]
fn pods_selected_alike_share_one_group() {
    let set = policy_set(
        &[
            &format!("{BACKEND}\ningress: [ {{ ports: [ {{ port: http }} ] }} ]"),
            "podSelector: { matchLabels: { app: db } }\npolicyTypes: [Egress]",
        ],
        "shop",
    );
    let universe = universe(&set);
    let policies: Vec<&Policy> = set.policies().collect();
    let pod = |app: &str, http: u16| Subject {
        labels: PeerLabels::from_identity(
            &pairs(&format!(
                "app={app},{NAMESPACE_LABEL}=shop,{CLUSTER_LABEL}=a"
            )),
            "a",
        ),
        named_ports: [("http".to_string(), (6, http))].into(),
        policy_id: None,
    };
    let endpoints = [
        pod("backend", 8080),
        pod("backend", 8080),
        pod("backend", 9090),
        pod("db", 8080),
        pod("web", 8080),
    ];
    let mut groups = PolicyGroups::default();
    let out = compile(&policies, &endpoints, &universe, &mut groups);
    let ids: Vec<u16> = out.assignments.iter().map(|a| a.policy_id).collect();
    assert_eq!(ids[0], ids[1], "same policies, same ports: one group");
    assert_ne!(ids[0], ids[2], "its own named port differs: its own group");
    assert_ne!(ids[0], ids[3]);
    assert_eq!(ids[4], 0, "no policy: no group");
    assert_eq!(groups.len(), 3);
    let flags: Vec<u16> = out.assignments.iter().map(|a| a.flags).collect();
    assert_eq!(flags, [IN, IN, IN, EG, 0]);
    let ports: Vec<(u16, u16)> = out
        .entries
        .iter()
        .map(|(key, _)| (key.policy_id, u16::from_be_bytes(key.port)))
        .collect();
    assert_eq!(
        ports,
        [(ids[0], 8080), (ids[2], 9090)],
        "the db group denies all: no entries"
    );

    // Recompiling keeps every id.
    let again = compile(&policies, &endpoints, &universe, &mut groups);
    assert_eq!(again.assignments, out.assignments);
}
