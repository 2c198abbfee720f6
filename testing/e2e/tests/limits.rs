//! Resource limits on the fleet in a box: a node whose ipcache map cannot
//! hold the fleet says so once (which setting to raise), counts every
//! failed write, keeps running and serving, and fills the missing entries
//! in as soon as others leave. (A full flow-event ring is counted in
//! `counters.rs`; services beyond `services.max-services` in the agent's
//! service programmer.)

use std::time::Duration;

use fleetnet_testing::{
    fleet_in_a_box::{FleetInABox, FleetSpec, Node},
    wait_for,
};

/// 12 pods want 12 exact (/32) entries on every node, in a hash of this
/// many (the 2 pod CIDRs go to the trie, of the same size).
const CAPACITY: u32 = 10;

#[test]
fn a_full_ipcache_is_reported_and_filled_in_as_room_appears() {
    let mut spec = FleetSpec::new(2, 1, 6);
    spec.ipcache_max_entries = CAPACITY;
    let mut fleet = FleetInABox::build(spec).expect("building the fleet");
    fleet
        .start_agents()
        .expect("the agents start with a map too small");
    for node in &fleet.nodes {
        wait_for(
            "failed ipcache writes counted",
            Duration::from_secs(15),
            || write_errors(node) >= 1.0,
        );
        let exact = node
            .maps()
            .ipcache()
            .unwrap()
            .keys()
            .filter(|cidr| cidr.prefix_len() == 32)
            .count();
        assert_eq!(
            exact, CAPACITY as usize,
            "{}: the map is not filled to capacity",
            node.id
        );
        let log = node.log();
        assert_eq!(
            log.matches("the ipcache map is full").count(),
            1,
            "{}: the full map is not reported exactly once:\n{log}",
            node.id
        );
        assert!(log.contains("raise bpf.ipcache-max-entries"), "{log}");
        assert!(node.agent_running(), "{}: the agent died", node.id);
        assert!(
            node.metrics_text().is_ok(),
            "{}: the agent stopped serving",
            node.id
        );
    }

    // Room appears: five of c2's six pods leave.
    let leaving: Vec<String> = fleet.node("c2/n1").pods[1..]
        .iter()
        .map(|pod| pod.id.clone())
        .collect();
    for id in &leaving {
        fleet.remove_pod(id).unwrap();
    }
    let took = fleet
        .wait_converged(Duration::from_secs(30))
        .expect("every entry programmed once there is room");
    eprintln!("entries that waited were programmed {took:?} after the pods left");
    for node in &fleet.nodes {
        assert!(
            node.log().contains("the ipcache map has room again"),
            "{}: no word that the map has room again",
            node.id
        );
    }
}

fn write_errors(node: &Node) -> f64 {
    node.metric(r#"fleetnet_map_write_errors_total{map="ipcache"}"#)
        .ok()
        .flatten()
        .unwrap_or(0.0)
}
