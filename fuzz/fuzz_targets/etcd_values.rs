//! Keys and values as another agent, a controller or a hostile writer
//! could leave them in etcd, read the way the agent and the fleet
//! controller read them.
//!
//! The input is one entry a line: `KEY VALUE` (split at the first space)
//! is a put, a `KEY` alone a delete. Keys are read as the watcher reads
//! them (lossy UTF-8), values are raw bytes.
//!
//! - the mesh: every entry is applied to a [`MeshState`] as a watch event,
//!   then all puts again as one listing, and everything the agent reads
//!   from the state afterwards is read; every ipcache entry it asks for
//!   must belong to an accepted cluster;
//! - the fleet: every value is decoded as each fleet document, and what
//!   decodes goes where the agent or the controller takes it (a revision's
//!   bundle is validated as an agent applies it, a strategy starts a run,
//!   a run is advanced, rolled back, resumed and rendered).

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use fleetnet_agent::mesh::{
    identity::labels_hash,
    state::{MeshState, Viewpoint},
};
use fleetnet_fleet::{
    model::{self, Report, Revision, Run, Strategy, Target},
    render,
    rollout::{self, View},
};
use fleetnet_policy::{
    compile::PeerLabels,
    identity::{CLUSTER_LABEL, Labels},
};
use fleetnet_store::{
    StoredValue, Update, fleet_keys,
    keys::{self as mesh_keys, Key},
    records::{
        BackendRecord, ClusterRecord, EndpointRecord, IdentityRecord, NodeRecord, Record,
        RoutingMode,
    },
};
use libfuzzer_sys::fuzz_target;

/// A fixed "now" for the controller, in Unix seconds.
const NOW: f64 = 1_700_000_000.0;

fuzz_target!(|data: &[u8]| {
    let entries = entries(data);
    for (_, value) in &entries {
        if let Some(value) = value {
            decode_records(value);
        }
    }
    mesh(&entries);
    fleet(&entries);
});

type Entry<'a> = (String, Option<&'a [u8]>);

fn entries(data: &[u8]) -> Vec<Entry<'_>> {
    data.split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.iter().position(|byte| *byte == b' ') {
            Some(space) => (
                String::from_utf8_lossy(&line[..space]).into_owned(),
                Some(&line[space + 1..]),
            ),
            None => (String::from_utf8_lossy(line).into_owned(), None),
        })
        .collect()
}

/// Every mesh record decoder on `value`, whatever its key: each returns
/// a record or an error, and what decodes encodes back to a record equal
/// to it.
fn decode_records(value: &[u8]) {
    fn round_trip<T: Record + PartialEq + std::fmt::Debug>(value: &[u8]) {
        if let Ok(record) = T::decode(value) {
            assert_eq!(T::decode(&record.encode()).as_ref(), Ok(&record));
        }
    }
    round_trip::<ClusterRecord>(value);
    round_trip::<NodeRecord>(value);
    round_trip::<EndpointRecord>(value);
    round_trip::<IdentityRecord>(value);
    round_trip::<BackendRecord>(value);
}

fn local() -> Viewpoint {
    Viewpoint {
        cluster: "c1".into(),
        cluster_id: 1,
        pod_cidrs: vec!["10.1.0.0/16".parse().expect("a CIDR")],
        node: "n1".into(),
        // Native with an exception: fuzzed records' routing is agreed on.
        routing: RoutingMode::Native,
        routing_peers: [("c2".to_string(), RoutingMode::Tunnel)].into(),
    }
}

fn mesh(entries: &[Entry<'_>]) {
    let mut watched = MeshState::new(local());
    let mut listing = Vec::new();
    for (revision, (key, value)) in (1..).zip(entries) {
        let update = match value {
            Some(value) => {
                let stored = StoredValue {
                    key: key.clone(),
                    value: value.to_vec(),
                    create_revision: revision,
                    mod_revision: revision,
                };
                listing.push(stored.clone());
                Update::Put(stored)
            }
            None => Update::Delete { key: key.clone() },
        };
        watched.apply(update);
    }
    read(&mut watched, entries);
    // The same keys listed afresh, as after a watch gap.
    let mut listed = MeshState::new(local());
    listed.replace(listing);
    read(&mut listed, entries);
}

/// What the agent reads from the mesh state after a change.
fn read(state: &mut MeshState, entries: &[Entry<'_>]) {
    let accepted: BTreeMap<u16, String> = state
        .accepted()
        .map(|(name, id)| (id, name.to_string()))
        .collect();
    for (cidr, entry) in state.ipcache() {
        assert!(
            accepted.contains_key(&entry.cluster_id),
            "{cidr} is programmed for cluster id {}, which is not accepted",
            entry.cluster_id
        );
    }
    let _ = state.cluster_stats();
    let _ = state.named_ports();
    let _ = (state.endpoint_count(), state.node_count(), state.refused());
    let _ = (state.take_services_changed(), state.take_peers_changed());
    for (id, cluster, record) in state.identities() {
        let peer = PeerLabels::from_identity(&record.labels, cluster);
        assert_eq!(
            peer.pod.get(CLUSTER_LABEL),
            Some(&cluster.to_string()),
            "identity {id} must carry its owner's cluster label"
        );
        let _ = labels_hash(&record.labels);
    }
    for (key, _) in entries {
        match mesh_keys::parse(key) {
            Some(Key::Backend {
                namespace, service, ..
            }) => {
                let _ = state.remote_backends(&namespace, &service);
            }
            Some(Key::Endpoint { ip, .. }) => {
                let _ = state.endpoint(ip);
            }
            Some(Key::Identity { id, .. }) => {
                let _ = state.identity(id);
            }
            _ => {}
        }
    }
}

fn fleet(entries: &[Entry<'_>]) {
    // What the controller sees: publishing nodes, reports, targets and
    // the registered clusters' labels.
    let mut view = View::default();
    let mut clusters: BTreeMap<String, Labels> = BTreeMap::new();
    for (key, value) in entries {
        let Some(value) = value else { continue };
        match mesh_keys::parse(key) {
            Some(Key::Node { cluster, node }) => {
                view.nodes
                    .entry(cluster)
                    .or_insert_with(BTreeSet::new)
                    .insert(node);
            }
            Some(Key::Cluster { name }) => {
                if let Ok(record) = ClusterRecord::decode(value) {
                    clusters.insert(name, record.labels);
                }
            }
            _ => {}
        }
        if let (Some(agent), Ok(report)) = (
            fleet_keys::parse_report(key),
            model::decode::<Report>(value),
        ) {
            view.reports.insert(agent, report);
        }
        if let (Some(cluster), Ok(target)) = (
            key.strip_prefix(&fleet_keys::targets()),
            model::decode::<Target>(value),
        ) {
            view.targets.insert(cluster.to_string(), target);
        }
    }
    let mut runs = Vec::new();
    for (_, value) in entries {
        let Some(value) = value else { continue };
        // What an agent does with the revision its target names.
        if let Ok(revision) = model::decode::<Revision>(value) {
            let _ = revision.bundle.validate("c1");
            let _ = render::revision_text(&revision);
        }
        if let Ok(strategy) = model::decode::<Strategy>(value)
            && strategy.validate().is_ok()
            && let Ok(mut run) = rollout::start(1, 1, &strategy, &clusters, NOW)
        {
            rollout::advance(&mut run, &view, NOW);
        }
        if let Ok(run) = model::decode::<Run>(value) {
            // The store refuses a damaged run; moving one anyway must not
            // crash the controller either. A controller pass, later
            // passes, and the CLI's commands:
            let _ = run.check();
            let mut moved = run.clone();
            rollout::advance(&mut moved, &view, NOW);
            rollout::advance(&mut moved, &view, NOW + 1e6);
            rollout::resume(&mut moved, NOW + 2e6);
            rollout::roll_back(&mut moved, NOW + 3e6);
            let _ = render::run_text(&run, NOW, &[]);
            runs.push(run);
        }
    }
    let _ = render::runs_table(&runs);
}
