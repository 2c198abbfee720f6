//! Seeing the whole fleet, end to end. The relay, on 2 clusters x 2 nodes
//! x 1 pod, every agent serving `/status` and `/flows` over mutual TLS
//! (certificates from `fleetnet fleet ca issue`), one `fleetnet relay` in
//! the underlay:
//!
//! - `fleetnet status --fleet` lists every node of every cluster, healthy;
//! - `fleetnet observe --fleet` merges flows seen on different nodes and
//!   clusters: forwarded ones from the sending side, a policy denial from
//!   the receiving side, filtered by cluster, namespace, verdict and reason;
//! - an agent's metrics port answers `/status` and `/flows` to its own
//!   host only, and its observe listener refuses a client without a
//!   certificate, and answers one from the fleet CA that is not the
//!   relay's with a 403.
//!
//! Then the web UI and the Grafana dashboards on 3 clusters, in Chromium.

use std::{net::SocketAddr, process::Output, time::Duration};

use fleetnet_agent::observe::flows::FlowRecord;
use fleetnet_relay::view::FleetStatus;
use fleetnet_testing::{
    browser, dashboard_render,
    fleet_in_a_box::{ETCD_IP, FleetInABox, FleetSpec},
    http::http_get,
    probe,
    prometheus::Prometheus,
    relay::{OBSERVE_PORT, Relay},
    wait_for,
};

const PORT: u16 = 9000;

/// A fleet of `spec` whose agents serve the relay over mutual TLS, up and
/// converged, and a relay polling every `interval` seconds.
fn fleet_with_relay(spec: FleetSpec, interval: f64) -> (FleetInABox, Relay) {
    let fleet = FleetInABox::build(spec).expect("building the fleet");
    fleet
        .secure_observe()
        .expect("issuing the agents' certificates");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    let relay = fleet.start_relay(interval).expect("starting the relay");
    (fleet, relay)
}

/// Cluster `cluster`'s `app: p1` pods take no ingress; returns once the
/// datapath of pod `enforced_at` (`cC/nN/pP`) holds it.
fn deny_p1(fleet: &FleetInABox, cluster: u16, enforced_at: &str) {
    fleet
        .write_policy(
            cluster,
            "deny-p1",
            "{ podSelector: { matchLabels: { app: p1 } }, policyTypes: [Ingress] }",
        )
        .unwrap();
    let node = fleet.node(&enforced_at[..enforced_at.rfind('/').unwrap()]);
    let target = fleet.pod(enforced_at).ip.octets();
    wait_for("the policy is enforced", Duration::from_secs(10), || {
        node.maps().endpoints().unwrap()[&target].flags != 0
    });
}

fn through_relay(fleet: &FleetInABox, relay: &Relay, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    let address = relay.address.to_string();
    all.extend(["--fleet", "--relay", &address, "-o", "json"]);
    fleet.underlay_command(&all).unwrap()
}

fn fleet_status(fleet: &FleetInABox, relay: &Relay) -> (FleetStatus, Option<i32>) {
    let output = through_relay(fleet, relay, &["status"]);
    let status = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "status --fleet: {error}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (status, output.status.code())
}

fn fleet_flows(fleet: &FleetInABox, relay: &Relay, filters: &[&str]) -> Vec<FlowRecord> {
    let mut args = vec!["observe", "--last", "100000"];
    args.extend_from_slice(filters);
    let output = through_relay(fleet, relay, &args);
    assert!(
        output.status.success(),
        "observe --fleet: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn the_relay_merges_every_nodes_flows_and_status() {
    let (fleet, relay) = fleet_with_relay(FleetSpec::new(2, 2, 1), 0.2);

    // Every node of every cluster, healthy.
    wait_for(
        "the relay reads every node",
        Duration::from_secs(15),
        || {
            let (status, code) = fleet_status(&fleet, &relay);
            code == Some(0) && status.nodes().count() == 4
        },
    );
    let (status, _) = fleet_status(&fleet, &relay);
    let nodes: Vec<String> = status
        .nodes()
        .map(|(cluster, node)| format!("{cluster}/{}", node.node))
        .collect();
    assert_eq!(nodes, ["c1/n1", "c1/n2", "c2/n1", "c2/n2"]);
    for (cluster, node) in status.nodes() {
        let report = node.report.as_ref().expect("a report");
        assert_eq!(
            (report.cluster.as_str(), report.node.as_str()),
            (cluster, node.node.as_str())
        );
        assert_eq!(node.address.port(), OBSERVE_PORT);
    }
    let text = fleet
        .underlay_command(&["status", "--fleet", "--relay", &relay.address.to_string()])
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("healthy: 4 nodes in 2 clusters"), "{text}");

    // Forwarded flows from two senders on different clusters, and a denial
    // at a third node: one merged stream.
    deny_p1(&fleet, 2, "c2/n2/p1");
    fleet
        .send_datagrams("c1/n1/p1", "c2/n2/p1", PORT, 5)
        .unwrap();
    fleet
        .send_datagrams("c2/n1/p1", "c1/n2/p1", PORT, 5)
        .unwrap();
    let denied = || {
        fleet_flows(
            &fleet,
            &relay,
            &[
                "--verdict",
                "DROPPED",
                "--reason",
                "policy_denied_ingress",
                "--cluster",
                "c2",
            ],
        )
    };
    let udp = |flows: Vec<FlowRecord>| -> Vec<FlowRecord> {
        flows.into_iter().filter(|f| f.protocol == "udp").collect()
    };
    wait_for("the relay has the denials", Duration::from_secs(10), || {
        udp(denied()).len() >= 5
    });
    // The policy selects both nodes' pods: the probes of the mesh's
    // convergence check are denied at c2/n1 as well.
    let denied = udp(denied());
    assert_eq!(denied.len(), 5, "{denied:?}");
    assert!(denied.iter().all(|f| f.node == "c2/n2"
        && f.destination.pod.as_deref() == Some("n2-p1")
        && f.direction == "ingress"));
    wait_for(
        "the relay has flows of three nodes",
        Duration::from_secs(10),
        || {
            let flows = fleet_flows(&fleet, &relay, &[]);
            ["c1/n1", "c2/n1", "c2/n2", "c1/n2"]
                .iter()
                .all(|node| flows.iter().any(|f| f.node == *node))
        },
    );
    let from_c2 = fleet_flows(
        &fleet,
        &relay,
        &[
            "--verdict",
            "FORWARDED",
            "--pod",
            "default/n1-p1",
            "--cluster",
            "c2",
        ],
    );
    assert!(
        from_c2
            .iter()
            .any(|f| f.source.cluster == "c2" && f.destination.cluster == "c1"),
        "{from_c2:?}"
    );
    assert!(fleet_flows(&fleet, &relay, &["--namespace", "kube-system"]).is_empty());
    let merged = fleet_flows(&fleet, &relay, &[]);
    assert!(
        merged.windows(2).all(|w| w[0].seq < w[1].seq),
        "the relay numbers its stream"
    );

    // The node port answers its own host only.
    let node = fleet.node("c1/n1");
    assert!(node.fleetnet(&["status"]).unwrap().status.success());
    for path in ["/flows", "/status"] {
        let refused = http_get(&fleet.underlay, node.metrics_address(), path).unwrap();
        assert!(
            refused.starts_with(&format!("{path} names pods and answers this node only")),
            "{refused}"
        );
    }
    let asked = fleet
        .underlay_command(&["status", "--server", &node.metrics_address().to_string()])
        .unwrap();
    let said = String::from_utf8_lossy(&asked.stderr);
    assert_eq!(asked.status.code(), Some(2), "{said}");
    assert!(
        said.contains("403 Forbidden: /status names pods and answers this node only"),
        "the agent's own sentence reaches the user: {said}"
    );
    let metrics = http_get(&fleet.underlay, node.metrics_address(), "/metrics").unwrap();
    assert!(
        metrics.contains("fleetnet_build_info"),
        "Prometheus still scrapes"
    );

    // The observe listener: no certificate, no answer; a certificate of
    // the fleet CA that is not the relay's, a 403.
    let observe = SocketAddr::from((node.ip, OBSERVE_PORT));
    let plain = http_get(&fleet.underlay, observe, "/status");
    assert!(
        plain.is_err(),
        "plain HTTP on the observe listener: {plain:?}"
    );
    let agents = fleet.credentials_dir("c2");
    let curl = |cert: &str, key: &str| {
        fleet
            .underlay
            .command("curl")
            .unwrap()
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--resolve"])
            .arg(format!("c1.agents.fleetnet:{OBSERVE_PORT}:{}", node.ip))
            .arg("--cacert")
            .arg(agents.join("ca.crt"))
            .args(["--cert", cert, "--key", key])
            .arg(format!("https://c1.agents.fleetnet:{OBSERVE_PORT}/flows"))
            .output()
            .unwrap()
    };
    let other = curl(
        agents.join("tls.crt").to_str().unwrap(),
        agents.join("tls.key").to_str().unwrap(),
    );
    assert_eq!(
        String::from_utf8_lossy(&other.stdout),
        "403",
        "c2's certificate reads no flows of c1"
    );
    let relay_dir = fleet.credentials_dir("relay");
    let allowed = curl(
        relay_dir.join("tls.crt").to_str().unwrap(),
        relay_dir.join("tls.key").to_str().unwrap(),
    );
    assert_eq!(
        String::from_utf8_lossy(&allowed.stdout),
        "200",
        "the relay's certificate does"
    );
    drop(relay);
    fleet.stop_agents().expect("agents stop cleanly");
}

/// Where the fleet controller serves its metrics, on the underlay.
const CONTROLLER_PORT: u16 = 9963;

const STRATEGY: &str = "
name: two-stages
stages:
  - name: first
    selector: { matchLabels: { fleetnet.io/cluster: c1 } }
    cluster-timeout-seconds: 20
    gates: [ { wait: { seconds: 1 } } ]
  - name: second
    selector: { matchExpressions: [ { key: fleetnet.io/cluster, operator: In, values: [c2, c3] } ] }
    cluster-timeout-seconds: 20
    gates: [ { approval: {} } ]
";

/// A policy in a namespace without pods: the revision changes nothing
/// the traffic below meets.
const REVISION: &str = "
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: { name: quiet, namespace: elsewhere }
    spec: { podSelector: {}, policyTypes: [Ingress] }
";

/// Datagrams from `from` to `to` every 20 ms until dropped.
struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    fn start(fleet: &FleetInABox, pairs: &[(&str, &str)]) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sockets: Vec<_> = pairs
            .iter()
            .map(|(from, to)| {
                let (source, destination) = (fleet.pod(from), fleet.pod(to));
                let socket = probe::udp_socket(
                    &source.netns,
                    SocketAddr::from((source.ip, 0)),
                    Duration::from_secs(1),
                )
                .unwrap();
                (socket, SocketAddr::from((destination.ip, PORT)))
            })
            .collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for (socket, to) in &sockets {
                    let _ = socket.send_to(b"ui", to);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The web UI in Debian's headless Chromium, against 3 clusters with
/// traffic, a policy denial and a rollout waiting for approval: every
/// cluster is drawn, the denied edge is, its flows are listed when it is
/// selected, and the rollout's stages are shown. Then the Grafana
/// dashboards' queries against a real Prometheus scraping the same fleet.
/// Screenshots of both go to target/artifacts/ui.
#[test]
fn the_web_ui_and_the_dashboards_show_the_fleet() {
    use fleetnet_fleet::model::StageState;
    use fleetnet_relay::map::FleetMap;

    let (fleet, relay) = fleet_with_relay(FleetSpec::new(3, 1, 2), 0.5);
    // A real Prometheus scraping every agent (labelled with its cluster,
    // as a fleet's scrape configuration does) and the controller.
    let mut targets: Vec<(SocketAddr, Vec<(&str, &str)>)> = fleet
        .nodes
        .iter()
        .map(|node| {
            (
                node.metrics_address(),
                vec![("cluster", node.cluster.as_str())],
            )
        })
        .collect();
    targets.push((SocketAddr::from((ETCD_IP, CONTROLLER_PORT)), Vec::new()));
    let prometheus =
        Prometheus::start_labelled(&fleet.underlay, SocketAddr::from((ETCD_IP, 9090)), &targets)
            .expect("starting Prometheus");
    deny_p1(&fleet, 2, "c2/n1/p1");
    let _traffic = Sender::start(
        &fleet,
        &[
            ("c1/n1/p1", "c2/n1/p1"),
            ("c3/n1/p1", "c1/n1/p2"),
            ("c1/n1/p2", "c3/n1/p2"),
        ],
    );

    // A rollout: the first stage done, the second waiting for approval.
    let file = |name: &str, yaml: &str| {
        fleet
            .write_file(name, yaml)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let cli = |args: &[&str]| fleet.fleet_command_ok(args).unwrap();
    cli(&[
        "fleet",
        "strategy",
        "apply",
        "-f",
        &file("two.yaml", STRATEGY),
    ]);
    cli(&[
        "fleet",
        "revision",
        "create",
        "-f",
        &file("quiet.yaml", REVISION),
    ]);
    let _controller = fleet.start_controller("a", CONTROLLER_PORT).unwrap();
    cli(&[
        "rollout",
        "start",
        "--revision",
        "1",
        "--strategy",
        "two-stages",
    ]);
    wait_for(
        "the second stage waits for approval",
        Duration::from_secs(60),
        || {
            fleet
                .run_status(1)
                .is_ok_and(|run| run.stages[1].state == StageState::Gating)
        },
    );

    // The relay's map has the traffic: forwarded one way, denied another.
    let map = || -> FleetMap {
        serde_json::from_str(&http_get(&fleet.underlay, relay.address, "/map").unwrap()).unwrap()
    };
    wait_for("the map shows the traffic", Duration::from_secs(15), || {
        let map = map();
        let edge = |source: &str, destination: &str| {
            map.edges
                .iter()
                .find(|e| e.source == source && e.destination == destination)
                .cloned()
        };
        edge("c1", "c2").is_some_and(|e| {
            e.drops_per_second
                .get("policy_denied_ingress")
                .is_some_and(|rate| *rate > 10.0)
        }) && edge("c3", "c1").is_some_and(|e| e.packets_per_second > 10.0)
    });

    let artifacts = browser::artifacts_dir();
    std::fs::create_dir_all(&artifacts).unwrap();
    let profile = fleet.workdir.join("chromium");
    let page = format!("http://{}/", relay.address);
    let dom = browser::dump_dom(&fleet.underlay, &profile, &format!("{page}#edge=c1,c2"))
        .expect("chromium loads the UI");
    std::fs::write(artifacts.join("fleet-edge-c1-c2.html"), &dom).unwrap();
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page read the relay:\n{dom}"
    );
    for cluster in ["c1", "c2", "c3"] {
        assert!(
            dom.contains(&format!(r#"data-cluster="{cluster}""#)),
            "cluster {cluster} drawn:\n{dom}"
        );
    }
    assert!(
        dom.contains(r#"class="edge dropping selected" data-source="c1" data-destination="c2""#),
        "the denied edge drawn, and selected:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-verdict="DROPPED" data-reason="policy_denied_ingress""#),
        "the denied flow listed:\n{dom}"
    );
    assert!(
        !dom.contains("c3/default/"),
        "only the edge's flows, none of c3's pods:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-stage="first" data-state="completed""#)
            && dom.contains(r#"data-stage="second" data-state="gating""#),
        "the rollout's stages shown:\n{dom}"
    );
    for (name, fragment) in [
        ("fleet-map.png", "#edge=c1,c2"),
        ("fleet-cluster-c3.png", "#cluster=c3"),
    ] {
        browser::screenshot(
            &fleet.underlay,
            &profile,
            &format!("{page}{fragment}"),
            browser::WINDOW,
            &artifacts.join(name),
        )
        .expect("a screenshot");
    }

    // The dashboards, drawn from their JSON with what this Prometheus
    // answers to their queries: every query accepted, the panels about
    // what happened here not empty.
    wait_for(
        "Prometheus has rates and the rollout",
        Duration::from_secs(20),
        || {
            let has = |query: &str| {
                prometheus
                    .query(query)
                    .is_ok_and(|s| s.iter().any(|(_, v)| *v > 0.0))
            };
            has("sum(rate(fleetnet_drop_packets_total[4s]))")
                && has("sum(rate(fleetnet_forwarded_packets_total[4s]))")
                && has("sum(fleetnet_rollout_runs)")
        },
    );
    let dashboards = [
        (
            "fleetnet-datapath",
            &[
                "Forwarded packets per second, by verdict",
                "Dropped packets per second, by reason",
                "Policy denials per second, by direction",
                "Traffic between clusters",
                "Drops between clusters, by reason",
                "BPF map fill, fullest node",
            ][..],
        ),
        (
            "fleetnet-mesh",
            &["Agents", "Remote clusters", "Local pods"][..],
        ),
        (
            "fleetnet-rollouts",
            &[
                "Controller leading",
                "Approvals pending",
                "Runs",
                "Clusters by state",
            ][..],
        ),
    ];
    let manifests =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/dashboards");
    for (name, with_data) in dashboards {
        let text = std::fs::read_to_string(manifests.join(format!("{name}.json"))).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let panels = dashboard_render::query(&dashboard, &prometheus, 60)
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        for title in with_data {
            let panel = panels
                .iter()
                .find(|p| p.title == *title)
                .unwrap_or_else(|| panic!("{name} has no panel {title:?}"));
            assert!(!panel.series.is_empty(), "{name}: {title:?} shows no data");
        }
        let html = fleet.workdir.join(format!("{name}.html"));
        let title = dashboard["title"].as_str().unwrap_or(name);
        std::fs::write(&html, dashboard_render::html(title, &panels)).unwrap();
        browser::screenshot(
            &fleet.underlay,
            &profile,
            &format!("file://{}", html.display()),
            (1400, 1600),
            &artifacts.join(format!("{name}.png")),
        )
        .expect("a screenshot of the dashboard");
    }
    drop(relay);
}
