//! A cluster's lifecycle with the CLI alone, on 3 clusters x 1 node x 3
//! pods with etcd authentication on. c1 and c2 are set up by the harness;
//! c3 has no etcd user until `fleetnet cluster join` makes it, and its
//! agent runs from the config and password of the overlay the join wrote.
//!
//! - join: c3 gets the lowest free id and meshes with the others; its
//!   credentials cannot write another cluster's keys; overlapping,
//!   duplicate, invalid and non-admin joins are refused with nothing
//!   written;
//! - cordon: new connections from c1 to a global service go to c2 only,
//!   while a long-lived connection to a c3 backend keeps going;
//! - retire during that connection: it waits for the connection to end,
//!   then no key of c3 is left in etcd, no map holds it, its user cannot
//!   log in, its agent has stopped with the sentence, and its id can be
//!   joined again.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use fleetnet_testing::{
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, SERVICE_PORT, agent_binary},
    poll,
    probe::{self, Conversation, EchoServer},
    wait_for,
};

const GLOBAL: (&str, &str) = ("service.cilium.io/global", "true");

fn vip(cluster: u16) -> Ipv4Addr {
    Ipv4Addr::new(172, 20, cluster as u8, 10)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `fleetnet <args>` as the fleet's admin; panics unless it succeeds.
fn admin(fleet: &FleetInABox, args: &[&str]) -> String {
    let output = fleet.fleetnet_admin(args).unwrap();
    assert!(
        output.status.success(),
        "fleetnet {args:?}: {}",
        text(&output)
    );
    text(&output)
}

/// Every key and etcd user: what a refused join must leave as it was.
fn etcd_state(fleet: &FleetInABox) -> (Vec<String>, String) {
    let keys = fleet.etcd_keys("/").unwrap();
    let users = fleet.etcdctl(&["user", "list"]).unwrap();
    (keys, String::from_utf8_lossy(&users.stdout).into_owned())
}

/// The cluster the backend answering a connection from `client` is in.
fn answering_clusters(fleet: &FleetInABox, client: &str, connections: usize) -> BTreeSet<String> {
    let netns = &fleet.pod(client).netns;
    (0..connections)
        .map(|i| {
            let reply = probe::tcp_exchange(
                netns,
                SocketAddr::from((vip(1), SERVICE_PORT)),
                &format!("q{i}"),
                Duration::from_secs(3),
            )
            .unwrap_or_else(|error| panic!("{client} -> {}: {error}", vip(1)));
            reply.split('/').next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_cluster_joins_is_cordoned_and_retires_with_the_cli_alone() {
    let spec = FleetSpec {
        etcd_auth: true,
        etcd_users: 2,
        ..FleetSpec::new(3, 1, 3)
    };
    let fleet = FleetInABox::build(spec).expect("building the fleet");
    let binary = agent_binary();
    for node in ["c1/n1", "c2/n1"] {
        fleet.node(node).start_agent(&binary).unwrap();
    }
    for node in ["c1/n1", "c2/n1"] {
        fleet
            .node(node)
            .wait_ready(Duration::from_secs(60))
            .unwrap();
    }
    let out = fleet.workdir.join("overlay-c3");
    let out_arg = out.display().to_string();

    // Refusals, each one sentence, each writing nothing.
    let before = etcd_state(&fleet);
    let refusals: [(&[&str], &str); 5] = [
        (
            &["cluster", "join", "c4", "--pod-cidr", "10.1.128.0/17"],
            "overlaps cluster c1's 10.1.0.0/16",
        ),
        (
            &["cluster", "join", "c1", "--pod-cidr", "10.9.0.0/16"],
            "cluster name c1 is taken",
        ),
        (
            &[
                "cluster",
                "join",
                "c4",
                "--pod-cidr",
                "10.9.0.0/16",
                "--id",
                "2",
            ],
            "cluster id 2 is taken by cluster c2",
        ),
        (
            &["cluster", "join", "C_4", "--pod-cidr", "10.9.0.0/16"],
            "is not a valid name",
        ),
        (
            &["cluster", "join", "c4", "--pod-cidr", "10.9.0.1/16"],
            "has host bits set",
        ),
    ];
    for (args, expected) in refusals {
        let output = fleet.fleetnet_admin(args).unwrap();
        let said = text(&output);
        assert!(!output.status.success(), "{args:?} was not refused: {said}");
        assert!(said.contains(expected), "{args:?}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "not one sentence: {said}");
    }
    // A cluster's user may not join others.
    let c1_login = fleet.etcd_login(1).unwrap();
    let (c1_user, c1_password) = c1_login.split_once(':').unwrap();
    let password_file = fleet.workdir.join("c1.password");
    std::fs::write(&password_file, c1_password).unwrap();
    let as_c1 = |args: &[&str]| {
        fleet
            .underlay
            .command(&binary)
            .unwrap()
            .args(args)
            .arg("--etcd")
            .arg(fleet.etcd_endpoints().join(","))
            .args(["--etcd-user", c1_user, "--etcd-password-file"])
            .arg(&password_file)
            .output()
            .unwrap()
    };
    let output = as_c1(&["cluster", "join", "c4", "--pod-cidr", "10.9.0.0/16"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("takes the fleet's admin"),
        "{}",
        text(&output)
    );
    assert_eq!(etcd_state(&fleet), before, "a refused join wrote to etcd");

    // Join c3: the lowest free id, 3.
    let joined_at = Instant::now();
    let said = admin(
        &fleet,
        &[
            "cluster",
            "join",
            "c3",
            "--pod-cidr",
            "10.3.0.0/16",
            "--labels",
            "env=test",
            "--out",
            &out_arg,
        ],
    );
    assert!(said.contains("cluster c3 joined with id 3"), "{said}");
    let again = fleet
        .fleetnet_admin(&["cluster", "join", "c3", "--pod-cidr", "10.3.0.0/17"])
        .unwrap();
    assert!(
        !again.status.success() && text(&again).contains("has already joined with id 3"),
        "{}",
        text(&again)
    );
    // The node runs with what the overlay says.
    let overlay: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("config.yaml")).unwrap()).unwrap();
    let user = overlay["etcd"]["username"].as_str().unwrap().to_string();
    assert_eq!(user, "fleetnet-c3-g1");
    let password = out.join("etcd-client/password");
    fleet
        .node("c3/n1")
        .edit_config(|config| {
            config["cluster"] = overlay["cluster"].clone();
            config["etcd"]["username"] = user.clone().into();
            config["etcd"]["password-file"] = password.display().to_string().into();
        })
        .unwrap();
    let c3 = fleet.node("c3/n1");
    c3.start_agent(&binary).unwrap();
    c3.wait_ready(Duration::from_secs(60)).unwrap();
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges with c3");
    let reachable = wait_reachable(&fleet, Duration::from_secs(30));
    eprintln!(
        "join -> c3's pods reachable from every cluster: {:?}",
        joined_at.elapsed()
    );
    assert!(reachable, "c3's pods are not reachable from c1 and c2");

    // c3's credentials write c3's keys only.
    let c3_login = format!(
        "{user}:{}",
        std::fs::read_to_string(&password).unwrap().trim()
    );
    let denied = fleet
        .etcdctl_as(Some(&c3_login), &["put", "/fleetnet/v1/nodes/c1/n9", "x"])
        .unwrap()
        .output()
        .unwrap();
    assert!(
        !denied.status.success() && text(&denied).contains("permission denied"),
        "c3 wrote c1's key: {}",
        text(&denied)
    );

    // cluster list: c3 active, one node, this build's version.
    let listed: serde_json::Value =
        serde_json::from_str(&admin(&fleet, &["cluster", "list", "-o", "json"])).unwrap();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == "c3")
        .expect("c3 listed");
    assert_eq!(row["state"], "active", "{row}");
    assert_eq!(row["nodes"], 1, "{row}");
    assert_eq!(row["id"], 3, "{row}");
    assert_eq!(row["labels"]["env"], "test", "{row}");
    assert_eq!(row["versions"][0], fleetnet_agent::VERSION, "{row}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["name"] == "c1" && row["state"] == "registered"),
        "{listed}"
    );

    // A global service: c1 has no backends of its own, c2 and c3 two each.
    let backends = ["c2/n1/p2", "c2/n1/p3", "c3/n1/p2", "c3/n1/p3"];
    let _servers: Vec<EchoServer> = backends
        .iter()
        .map(|id| {
            let pod = fleet.pod(id);
            EchoServer::start(&pod.netns, SocketAddr::from((pod.ip, BACKEND_PORT)), id).unwrap()
        })
        .collect();
    for cluster in 1..=3u16 {
        fleet
            .write_service(cluster, "web", vip(cluster), &[GLOBAL])
            .unwrap();
        let own: Vec<(&str, bool)> = backends
            .iter()
            .filter(|id| id.starts_with(&format!("c{cluster}/")))
            .map(|id| (*id, true))
            .collect();
        fleet.write_endpoints(cluster, "web", &own).unwrap();
    }
    let c1 = fleet.node("c1/n1");
    c1.wait_backends(vip(1), 4, Duration::from_secs(15))
        .unwrap();
    assert_eq!(
        answering_clusters(&fleet, "c1/n1/p1", 40),
        BTreeSet::from(["c2".to_string(), "c3".to_string()])
    );
    // A long-lived connection to a backend in c3.
    let server = SocketAddr::from((vip(1), SERVICE_PORT));
    let client = &fleet.pod("c1/n1/p1").netns;
    let mut flow = (0..50)
        .find_map(|_| {
            let mut flow = Conversation::open(client, server, Duration::from_secs(3)).unwrap();
            let reply = flow.ask("hello").unwrap();
            reply.starts_with("c3/").then_some((flow, reply))
        })
        .expect("no connection landed on c3");
    let backend = flow.1.split(':').next().unwrap().to_string();

    // Cordon c3.
    admin(&fleet, &["cluster", "cordon", "c3"]);
    c1.wait_backends(vip(1), 2, Duration::from_secs(15))
        .unwrap();
    assert_eq!(
        answering_clusters(&fleet, "c1/n1/p1", 30),
        BTreeSet::from(["c2".to_string()]),
        "a new connection went to cordoned c3"
    );
    let reply = flow.0.ask("still there").unwrap();
    assert!(reply.starts_with(&format!("{backend}:")), "{reply}");
    // Metrics and status are refreshed once a second.
    wait_for(
        "c1 showing c3 cordoned in fleetnet_mesh_cluster_cordoned and fleetnet status",
        Duration::from_secs(5),
        || {
            let metric = c1
                .metric("fleetnet_mesh_cluster_cordoned{target_cluster=\"c3\"}")
                .unwrap();
            let status = text(&c1.fleetnet(&["status"]).unwrap());
            metric == Some(1.0)
                && status
                    .lines()
                    .any(|line| line.starts_with("c3 ") && line.contains("cordoned"))
        },
    );
    admin(&fleet, &["cluster", "uncordon", "c3"]);
    c1.wait_backends(vip(1), 4, Duration::from_secs(15))
        .unwrap();

    // A cluster's user may not retire another.
    let output = as_c1(&["cluster", "retire", "c3"]);
    assert!(
        !output.status.success() && text(&output).contains("takes the fleet's admin"),
        "{}",
        text(&output)
    );
    let keys_before = fleet.etcd_keys("/fleetnet/").unwrap();

    // Retire c3 while the connection lives: it waits for it to end.
    let retire_started = Instant::now();
    let mut retire = {
        let mut command = fleet.underlay.command(&binary).unwrap();
        command
            .args([
                "cluster",
                "retire",
                "c3",
                "--drain-timeout",
                "60s",
                "--etcd",
            ])
            .arg(fleet.etcd_endpoints().join(","))
            .args(["--etcd-user", "root", "--etcd-password-file"])
            .arg(fleet.etcd_password_file("root"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.spawn().unwrap()
    };
    c1.wait_backends(vip(1), 2, Duration::from_secs(15))
        .unwrap();
    // Its progress, line by line, as it prints it.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = retire.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // It waits while c1's node counts the connection (its conntrack
    // sweep runs every 10 s), and the connection keeps its backend.
    let mut said = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !said.contains("waiting: 1 connection(s) to c3's backends") {
        assert!(
            Instant::now() < deadline,
            "retire never counted the connection: {said}"
        );
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            said += &line;
            said.push('\n');
        }
        assert!(
            retire.try_wait().unwrap().is_none(),
            "retire did not wait for the connection: {said}"
        );
        let reply = flow.0.ask("still there").unwrap();
        assert!(reply.starts_with(&format!("{backend}:")), "{reply}");
    }
    drop(flow);
    let ended = Instant::now();
    let status = retire.wait().unwrap();
    reader.join().unwrap();
    said.extend(lines.try_iter().map(|line| line + "\n"));
    let mut stderr = String::new();
    retire
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "retire failed: {said}{stderr}");
    assert!(
        said.contains("no connection to c3's backends is left"),
        "{said}"
    );
    eprintln!(
        "retire: {:?} in all, {:?} after the last connection ended; it said:\n{said}",
        retire_started.elapsed(),
        ended.elapsed()
    );
    let gone_at = Instant::now();

    // Nothing of c3 is left: keys, maps, its user, its agent.
    let left: Vec<String> = fleet
        .etcd_keys("/fleetnet/")
        .unwrap()
        .into_iter()
        .filter(|key| key.contains("/c3/") || key.ends_with("/c3") || key.ends_with("-ids/3"))
        .filter(|key| !key.ends_with("/members/c3"))
        .collect();
    assert!(left.is_empty(), "c3's keys left in etcd: {left:?}");
    for node in ["c1/n1", "c2/n1"] {
        let holds = |node: &str| {
            fleet
                .node(node)
                .maps()
                .ipcache()
                .unwrap()
                .keys()
                .any(|cidr| {
                    "10.3.0.0/16"
                        .parse::<ipnet::Ipv4Net>()
                        .unwrap()
                        .contains(cidr)
                })
        };
        wait_for(
            &format!("{node}'s ipcache dropping c3"),
            Duration::from_secs(10),
            || !holds(node),
        );
    }
    eprintln!(
        "retire done -> nothing of c3 in any map: {:?}",
        gone_at.elapsed()
    );
    c1.wait_backends(vip(1), 2, Duration::from_secs(5)).unwrap();
    let login = fleet
        .etcdctl_as(Some(&c3_login), &["get", "/fleetnet/v1/clusters/c1"])
        .unwrap()
        .output()
        .unwrap();
    assert!(
        !login.status.success(),
        "c3's user still logs in: {}",
        text(&login)
    );
    wait_for("c3's agent stopping", Duration::from_secs(10), || {
        !c3.agent_running()
    });
    assert!(
        c3.log().contains("cluster c3 was retired from the fleet"),
        "{}",
        c3.log()
    );
    let listed = admin(&fleet, &["cluster", "list"]);
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with("c3 ") && line.contains("retired")),
        "{listed}"
    );

    let keys_after = fleet.etcd_keys("/fleetnet/").unwrap();
    eprintln!(
        "etcd keys under /fleetnet/: {} before the retire, {} after",
        keys_before.len(),
        keys_after.len()
    );
    // Run again, it finds nothing left to do.
    let said = admin(&fleet, &["cluster", "retire", "c3"]);
    assert!(
        said.contains("0 key(s) deleted, etcd user already gone"),
        "{said}"
    );

    // Its name and id are free: a new cluster takes id 3.
    let said = admin(
        &fleet,
        &[
            "cluster",
            "join",
            "c5",
            "--pod-cidr",
            "10.3.0.0/16",
            "--out",
            &fleet.workdir.join("overlay-c5").display().to_string(),
        ],
    );
    assert!(said.contains("cluster c5 joined with id 3"), "{said}");
    assert!(Path::new(&fleet.workdir.join("overlay-c5/kustomization.yaml")).exists());
}

/// Waits until c1's and c2's first pods ping c3's first pod and back,
/// all within `timeout`.
fn wait_reachable(fleet: &FleetInABox, timeout: Duration) -> bool {
    let started = Instant::now();
    let pairs = [
        ("c1/n1/p1", "c3/n1/p1"),
        ("c2/n1/p1", "c3/n1/p1"),
        ("c3/n1/p1", "c1/n1/p1"),
    ];
    pairs.iter().all(|(from, to)| {
        let (netns, ip) = (&fleet.pod(from).netns, fleet.pod(to).ip);
        let left = timeout.saturating_sub(started.elapsed());
        poll(left, Duration::ZERO, || {
            probe::ping(netns, ip, Duration::from_millis(300))
                .unwrap_or(false)
                .then_some(())
        })
        .is_some()
    })
}
