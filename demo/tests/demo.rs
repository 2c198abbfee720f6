//! The scenario `cargo xtask demo` shows, without its pauses: each step
//! checks itself, and this test checks what the demo reported.

use std::time::Duration;

use fleetnet_demo::{self as demo, CLUSTERS, Options};

#[test]
fn the_demo_scenario_runs_and_shows_what_it_says() {
    fleetnet_testing::require_root();
    let shown = demo::run(&Options {
        pause: Duration::ZERO,
        keep: false,
    })
    .expect("the demo scenario");
    assert_eq!(shown.spread.len(), CLUSTERS as usize, "{:?}", shown.spread);
    assert!(
        shown.spread.values().all(|n| *n >= 5),
        "every cluster answers a fair share: {:?}",
        shown.spread
    );
    let clusters = |i: usize| shown.failover[i].keys().cloned().collect::<Vec<_>>();
    assert_eq!(clusters(0), ["c1"]);
    assert_eq!(clusters(1), ["c2", "c3"]);
    assert_eq!(clusters(2), ["c1"]);
    assert!(shown.denied > 0);
    assert!(shown.observed_drops > 0, "observe named a denied flow");
    assert!(shown.status_healthy, "fleetnet status exits 0");
    eprintln!("demo scenario took {:.1?}", shown.took);
}
