//! Observability end to end, on 2 clusters x 1 node x 2 pods:
//!
//! - N datagrams of one flow appear as N in both agents' counters, and a
//!   real Prometheus scraping the agents reads the same N back;
//! - Prometheus ingests every sample of the exposition (its own parser);
//! - a flow denied by policy shows up with its reason in the metrics and
//!   in `fleetnet observe`;
//! - `fleetnet status` is healthy, then reports the other cluster as
//!   disconnected once its agents stop, within the lease TTL.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use fleetnet_agent::api::status::StatusReport;
use fleetnet_testing::{
    fleet_in_a_box::{FleetInABox, FleetSpec, agent_binary},
    prometheus::Prometheus,
    wait_for,
};

const LEASE_TTL: u64 = 3;
const PORT: u16 = 9000;
const DATAGRAMS: u64 = 50;

fn status(fleet: &FleetInABox, node: &str) -> (StatusReport, Option<i32>) {
    let output = fleet
        .node(node)
        .fleetnet(&["status", "-o", "json"])
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "status of {node}: {error}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (report, output.status.code())
}

#[test]
fn counters_flows_and_status_across_two_clusters() {
    let fleet = FleetInABox::build(FleetSpec {
        lease_ttl_seconds: LEASE_TTL,
        ..FleetSpec::new(2, 1, 2)
    })
    .expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    let (c1, c2) = (fleet.node("c1/n1"), fleet.node("c2/n1"));

    // `status` on a healthy mesh.
    wait_for("c1 sees c2 connected", Duration::from_secs(10), || {
        let (report, code) = status(&fleet, "c1/n1");
        code == Some(0)
            && report
                .clusters
                .iter()
                .any(|c| c.name == "c2" && c.connected)
    });
    let text = c1.fleetnet(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("healthy") && text.contains("c2"), "{text}");

    // One version: what the binary says, what the agent reports in its
    // status and in `fleetnet_build_info`, and Cargo.toml's.
    let version = env!("CARGO_PKG_VERSION");
    let said = Command::new(agent_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&said.stdout).trim(),
        format!("fleetnet {version}")
    );
    assert_eq!(status(&fleet, "c1/n1").0.version, version);
    assert_eq!(
        c1.metric(&format!("fleetnet_build_info{{version=\"{version}\"}}"))
            .unwrap(),
        Some(1.0),
        "fleetnet_build_info names this version"
    );
    let (sum, count) = (
        c1.metric("fleetnet_mesh_sync_latency_seconds_sum")
            .unwrap()
            .unwrap(),
        c1.metric("fleetnet_mesh_sync_latency_seconds_count")
            .unwrap()
            .unwrap(),
    );
    assert!(count > 0.0, "mesh batches were timed");
    eprintln!(
        "mesh sync latency on c1/n1: {count} batches, mean {:.0} us",
        sum / count * 1e6
    );

    // A real Prometheus scraping both agents from the underlay.
    let prometheus = Prometheus::start_in(
        &fleet.underlay,
        SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), 9090)),
        &[c1.metrics_address(), c2.metrics_address()],
    )
    .expect("starting Prometheus");

    // N datagrams of one flow: N in the counters of both ends.
    fleet
        .send_datagrams("c1/n1/p1", "c2/n1/p1", PORT, DATAGRAMS)
        .unwrap();
    let sent = r#"fleetnet_forwarded_packets_total{direction="egress",verdict="tunnelled",protocol="udp",source_cluster="c1",destination_cluster="c2"}"#;
    let received = r#"fleetnet_forwarded_packets_total{direction="ingress",verdict="delivered_local",protocol="udp",source_cluster="c1",destination_cluster="c2"}"#;
    wait_for(
        "the counters show every datagram",
        Duration::from_secs(5),
        || {
            c1.metric(sent).unwrap() == Some(DATAGRAMS as f64)
                && c2.metric(received).unwrap() == Some(DATAGRAMS as f64)
        },
    );
    let query = r#"fleetnet_forwarded_packets_total{direction="egress",verdict="tunnelled",protocol="udp",destination_cluster="c2"}"#;
    let through_prometheus = wait_for(
        "Prometheus scraped the counter",
        Duration::from_secs(20),
        || {
            prometheus
                .query(query)
                .unwrap()
                .iter()
                .any(|(_, value)| *value == DATAGRAMS as f64)
        },
    );
    eprintln!(
        "Prometheus read {DATAGRAMS} back {through_prometheus:?} after the counters showed it"
    );

    // Prometheus' own parser took every sample of the exposition (a scrape
    // with a parse error would be dropped whole and `up` would be 0).
    let samples = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count() as f64;
    for node in [c1, c2] {
        let instance = node.metrics_address().to_string();
        wait_for(
            "Prometheus ingested a whole scrape",
            Duration::from_secs(15),
            || {
                let value = |metric: &str| {
                    prometheus
                        .query(&format!("{metric}{{instance=\"{instance}\"}}"))
                        .unwrap()
                        .first()
                        .map(|(_, v)| *v)
                };
                value("up") == Some(1.0)
                    && value("scrape_samples_scraped")
                        == Some(samples(&node.metrics_text().unwrap()))
            },
        );
    }

    // A flow denied by policy: its reason in the metrics and in observe.
    fleet
        .write_policy(
            2,
            "deny-p1",
            "{ podSelector: { matchLabels: { app: p1 } }, policyTypes: [Ingress] }",
        )
        .unwrap();
    let target = fleet.pod("c2/n1/p1").ip.octets();
    wait_for("c2 enforces the policy", Duration::from_secs(10), || {
        c2.maps().endpoints().unwrap()[&target].flags != 0
    });
    fleet
        .send_datagrams("c1/n1/p1", "c2/n1/p1", PORT, DATAGRAMS)
        .unwrap();
    let denied = r#"fleetnet_drop_packets_total{direction="ingress",reason="policy_denied_ingress",protocol="udp",source_cluster="c1",destination_cluster="c2"}"#;
    wait_for("the drops are counted", Duration::from_secs(5), || {
        c2.metric(denied).unwrap() == Some(DATAGRAMS as f64)
            && c2
                .metric(r#"fleetnet_policy_denials_total{direction="ingress"}"#)
                .unwrap()
                == Some(DATAGRAMS as f64)
    });
    // Events reach the agent a little after the counters: a drop behind
    // unread sampled forwards does not wake the reader, whose next pass is
    // at most 200 ms away.
    let dropped = || {
        c2.observe(&["--verdict", "DROPPED", "--pod", "default/n1-p1"])
            .unwrap()
    };
    wait_for("the drop events", Duration::from_secs(5), || {
        dropped().len() as u64 >= DATAGRAMS
    });
    let flows = dropped();
    assert_eq!(
        flows.len() as u64,
        DATAGRAMS,
        "one event per denied datagram"
    );
    let flow = &flows[0];
    assert_eq!(
        (
            flow.verdict.as_str(),
            flow.reason.as_str(),
            flow.protocol.as_str()
        ),
        ("DROPPED", "policy_denied_ingress", "udp")
    );
    assert_eq!(
        (flow.source.cluster.as_str(), flow.source.pod.as_deref()),
        ("c1", Some("n1-p1"))
    );
    assert_eq!(
        (
            flow.destination.cluster.as_str(),
            flow.destination.pod.as_deref(),
            flow.destination.port
        ),
        ("c2", Some("n1-p1"), Some(PORT))
    );
    assert_ne!(flow.source.identity, 0);
    let lines = c2
        .fleetnet(&["observe", "--verdict", "DROPPED", "--last", "1"])
        .unwrap();
    let line = String::from_utf8_lossy(&lines.stdout);
    assert!(
        line.contains("c1/default/n1-p1") && line.contains("DROPPED policy_denied_ingress"),
        "{line}"
    );
    // Forwarded flows are there too (every one is sampled in the fleet).
    let forwarded = c1
        .fleetnet(&[
            "observe",
            "--verdict",
            "FORWARDED",
            "--cluster",
            "c2",
            "--last",
            "5",
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&forwarded.stdout).lines().count(),
        5
    );

    // The other cluster's agents stop: within the lease TTL, c1 reports it
    // disconnected and `status` exits 1.
    c2.stop_agent().unwrap();
    let stopped = Instant::now();
    wait_for(
        "c1 reports c2 disconnected",
        Duration::from_secs(LEASE_TTL + 10),
        || {
            let (report, code) = status(&fleet, "c1/n1");
            code == Some(1)
                && report
                    .clusters
                    .iter()
                    .any(|c| c.name == "c2" && !c.connected)
        },
    );
    let disconnected = stopped.elapsed();
    eprintln!(
        "c2's agents stopped -> c1 reports it disconnected after {disconnected:?} (lease TTL {LEASE_TTL} s)"
    );
    assert!(
        disconnected <= Duration::from_secs(LEASE_TTL + 2),
        "took {disconnected:?} with a {LEASE_TTL} s lease"
    );
    let text = c1.fleetnet(&["status"]).unwrap();
    assert_eq!(text.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("cluster c2 is disconnected"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn status_of_an_agent_that_is_not_running_is_one_sentence_and_exit_2() {
    let output = Command::new(agent_binary())
        .args(["status", "--server", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("fleetnet: cannot reach the agent at 127.0.0.1:1 ("),
        "{stderr}"
    );
}
