//! A watch that falls behind etcd's compaction, at the agent. On a fleet
//! of 2 clusters x 1 node x 2 pods, c1's agent is frozen (SIGSTOP, as a
//! long pause or a starved CPU would) while the mesh changes faster than
//! its watch stream can hold, so etcd takes the watch off its live path.
//! Then pods come and go in c2 and etcd's history is compacted past all of
//! it. Thawed, the agent must be told its watch fell behind, list the mesh
//! again and end with exactly the fleet's pods: nothing stale, nothing
//! missing. Its datapath forwards all along.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use fleetnet_testing::{
    fleet_in_a_box::{FleetInABox, FleetSpec},
    http::{http_get, metric_value},
    probe,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Keys the agent ignores (an unknown kind under the mesh prefix), written
/// only to fill c1's watch stream.
const FILLER: &str = "/fleetnet/v1/test-filler/";
/// Revisions of filler written at a time, until etcd reports the watch
/// slow: past the 128 responses etcd queues per watch stream, plus what
/// HTTP/2 and TCP buffer toward a reader that is frozen.
const FILLER_ROUND: usize = 100;
const FILLER_ROUNDS: usize = 30;
const FILLER_BYTES: usize = 64 * 1024;

#[test]
fn a_watch_behind_compaction_lists_again_and_leaves_nothing_stale() {
    let mut fleet = FleetInABox::build(FleetSpec::new(2, 1, 2)).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("initial convergence");

    let c1 = fleet.node("c1/n1");
    let listings = c1.metric("fleetnet_mesh_listings_total").unwrap().unwrap();
    let log_offset = c1.log().len();
    let pid = Pid::from_raw(c1.agent_pid().expect("c1's agent runs") as i32);
    kill(pid, Signal::SIGSTOP).expect("freezing c1's agent");
    let frozen = Instant::now();

    fill_the_watch(&fleet);
    // The datapath does not need the agent.
    assert!(
        probe::ping(
            &fleet.pod("c1/n1/p1").netns,
            fleet.pod("c2/n1/p1").ip,
            Duration::from_secs(3)
        )
        .unwrap(),
        "c1 cannot reach c2 while its agent is frozen"
    );

    // Changes the frozen watch will never deliver, then history compacted
    // past them.
    let added = fleet.add_pod("c2/n1").expect("adding a pod");
    fleet.remove_pod("c2/n1/p2").expect("removing a pod");
    let c2_pods: BTreeSet<String> = fleet
        .pods()
        .filter(|(node, _)| node.id == "c2/n1")
        .map(|(_, pod)| pod.ip.to_string())
        .collect();
    fleetnet_testing::wait_for(
        "c2's agent to publish its pods",
        Duration::from_secs(20),
        || published_endpoints(&fleet, "c2") == c2_pods,
    );
    let compacted = fleet.etcd_compact().expect("compacting etcd");
    let c1 = fleet.node("c1/n1");
    assert_eq!(c1.log().len(), log_offset, "c1's agent logged while frozen");
    let stale = fleet.ipcache_mismatches(c1);
    assert!(!stale.is_empty(), "c1's ipcache already holds the changes");
    kill(pid, Signal::SIGCONT).expect("thawing c1's agent");
    let thawed = Instant::now();
    eprintln!(
        "c1's agent frozen for {:.1?}; history compacted at revision {compacted}; c1's ipcache \
         off in: {stale:?}",
        frozen.elapsed()
    );

    let told = Duration::from_secs(30);
    while !c1.log()[log_offset..].contains("the watch fell behind etcd's compaction") {
        assert!(
            thawed.elapsed() < told,
            "c1's agent was not told its watch fell behind in {told:?}; its log since the \
             freeze:\n{}",
            &c1.log()[log_offset..]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let converged = fleet
        .wait_converged(Duration::from_secs(30))
        .expect("c1 converges after its watch fell behind");
    let listed = c1.metric("fleetnet_mesh_listings_total").unwrap().unwrap();
    assert!(listed > listings, "c1 did not list the mesh again");
    assert!(
        probe::ping(
            &fleet.pod("c1/n1/p1").netns,
            fleet.pod(&added).ip,
            Duration::from_secs(3)
        )
        .unwrap(),
        "c1 cannot reach {added}, added while its agent was frozen"
    );
    c1.assert_untroubled();
    eprintln!(
        "c1 listed again and held exactly the fleet's pods {:.1?} after the thaw ({converged:.1?} \
         of waiting)",
        thawed.elapsed()
    );
}

/// Writes revisions of filler keys from the underlay until etcd counts a
/// slow watcher (c1's, the one not reading), then deletes them all.
fn fill_the_watch(fleet: &FleetInABox) {
    let endpoints = fleet.etcd_endpoints();
    let etcd_address: SocketAddr = endpoints[0]
        .trim_start_matches("http://")
        .parse()
        .expect("etcd's client address");
    fleet
        .underlay
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = etcd_client::Client::connect(&endpoints, None)
                    .await
                    .expect("connecting to etcd");
                let value = vec![b'x'; FILLER_BYTES];
                let mut written = 0;
                while slow_watchers(fleet, etcd_address) == 0 {
                    assert!(
                        written < FILLER_ROUND * FILLER_ROUNDS,
                        "etcd counts no slow watcher after {written} revisions of filler"
                    );
                    // 16 puts in flight: each its own revision, quickly.
                    let mut puts = tokio::task::JoinSet::new();
                    for i in written..written + FILLER_ROUND {
                        if puts.len() == 16 {
                            puts.join_next().await.unwrap().unwrap();
                        }
                        let mut kv = client.kv_client();
                        let value = value.clone();
                        puts.spawn(async move {
                            kv.put(format!("{FILLER}{i}"), value, None)
                                .await
                                .expect("writing filler")
                        });
                    }
                    while let Some(put) = puts.join_next().await {
                        put.unwrap();
                    }
                    written += FILLER_ROUND;
                    // etcd retries a watch that could not take an event
                    // every 10 ms before counting it slow.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                eprintln!(
                    "etcd counted c1's watch slow after {written} revisions of {} KiB",
                    FILLER_BYTES / 1024
                );
                client
                    .kv_client()
                    .delete(
                        FILLER,
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )
                    .await
                    .expect("deleting filler");
            })
        })
        .expect("entering the underlay");
}

/// etcd's count of watchers that fell behind, asked from the underlay.
fn slow_watchers(fleet: &FleetInABox, etcd: SocketAddr) -> u64 {
    let text = http_get(&fleet.underlay, etcd, "/metrics").expect("etcd's metrics");
    metric_value(&text, "etcd_debugging_mvcc_slow_watcher_total")
        .expect("etcd exposes etcd_debugging_mvcc_slow_watcher_total") as u64
}

/// The endpoint IPs `cluster` has published in etcd.
fn published_endpoints(fleet: &FleetInABox, cluster: &str) -> BTreeSet<String> {
    fleet
        .etcd_keys(&format!("/fleetnet/v1/endpoints/{cluster}/"))
        .unwrap_or_default()
        .iter()
        .filter_map(|key| key.rsplit('/').next())
        .map(str::to_string)
        .collect()
}
