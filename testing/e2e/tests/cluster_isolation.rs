//! Clusters kept apart in the shared etcd: the fleet in a box with etcd's
//! authentication on, a root user for the harness and one user per
//! cluster whose role ([`fleetnet_store::roles::cluster_role`], the
//! recipe in docs/operations.md) reads the whole mesh and writes only that cluster's
//! keys; each cluster's agents log in with their own.
//!
//! - the fleet converges and every pod reaches every other;
//! - with cluster c1's credentials, etcdctl can read c2's keys but not
//!   overwrite or delete any of them: etcd answers "permission denied",
//!   and nothing changes in etcd or in any node's maps;
//! - what c1 may write into its own keys but claims c2's space (a node
//!   with c2's pod CIDR, endpoints at c2's addresses or with c2's
//!   identities, an identity in c2's range, a backend at c2's address) is
//!   rejected by the other clusters' agents, logged and counted in
//!   `fleetnet_mesh_entries_rejected_total{cluster,kind}`, and programmed
//!   nowhere;
//! - an agent whose password etcd refuses exits with one sentence.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use dataplane_common::identity;
use fleetnet_store::{
    fleet_keys, keys,
    records::{BackendRecord, EndpointRecord, IdentityRecord, NodeRecord, Record, VERSION},
};
use fleetnet_testing::{
    fleet_in_a_box::{FleetInABox, FleetSpec, agent_binary, etcd_user},
    probe,
};

fn fleet() -> FleetInABox {
    let spec = FleetSpec {
        etcd_auth: true,
        ..FleetSpec::new(3, 1, 2)
    };
    let fleet = FleetInABox::build(spec).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("initial convergence");
    fleet
}

/// `etcdctl <args>` logged in as cluster `cluster`'s user.
fn etcdctl_as_cluster(fleet: &FleetInABox, cluster: u16, args: &[&str]) -> Output {
    let login = fleet.etcd_login(cluster).unwrap();
    fleet
        .etcdctl_as(Some(&login), args)
        .unwrap()
        .output()
        .unwrap()
}

/// Every key under `prefix` with its value, read as root.
fn values(fleet: &FleetInABox, prefix: &str) -> BTreeMap<String, String> {
    let output = fleet.etcdctl(&["get", "--prefix", prefix]).unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|pair| (pair[0].to_string(), pair.get(1).unwrap_or(&"").to_string()))
        .collect()
}

#[test]
fn with_etcd_auth_the_fleet_converges_and_one_cluster_cannot_touch_anothers_keys() {
    let fleet = fleet();
    every_pod_reaches_every_other(&fleet);

    // etcd really requires a login.
    let anonymous = fleet
        .etcdctl_as(None, &["get", "--prefix", "/fleetnet/v1/"])
        .unwrap()
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "etcd answered without a login: {}",
        String::from_utf8_lossy(&anonymous.stdout)
    );

    // c1 reads c2's keys (every agent reads the whole mesh)...
    let c2_node = keys::node("c2", "n1");
    let read = etcdctl_as_cluster(&fleet, 1, &["get", &c2_node]);
    assert!(
        read.status.success() && String::from_utf8_lossy(&read.stdout).contains(&c2_node),
        "c1 cannot read {c2_node}: {}",
        String::from_utf8_lossy(&read.stderr)
    );

    // ... but writes none of them: every kind of key that names c2.
    let before = values(&fleet, "/fleetnet/");
    let c3 = fleet.node("c3/n1");
    let c3_before = c3.maps().ipcache().unwrap();
    let c2_pod = fleet.node("c2/n1").pods[0].ip;
    let pick = |prefix: &str| -> String {
        before
            .keys()
            .find(|key| key.starts_with(prefix))
            .unwrap_or_else(|| panic!("no key under {prefix}"))
            .clone()
    };
    let mut targets = vec![
        keys::cluster("c2"),
        keys::cluster_id(2),
        c2_node.clone(),
        keys::endpoint("c2", c2_pod),
        pick(&keys::identities_of("c2")),
        pick(&format!("{}identity-index/", keys::local_of("c2"))),
        pick(&keys::identity_refs_of("c2")),
        keys::leader("c2"),
        keys::backend("default", "web", "c2", "http.tcp", c2_pod, 8080),
        fleet_keys::report("c2", "n1"),
        fleet_keys::target("c2"),
    ];
    // A key c2 does not hold yet, and one of a cluster named like c1.
    targets.push(keys::endpoint("c2", Ipv4Addr::new(10, 2, 1, 200)));
    targets.push(keys::node("c10", "n1"));
    let rogue = NodeRecord {
        v: VERSION,
        ip: Ipv4Addr::new(198, 18, 1, 99),
        pod_cidrs: vec!["10.2.1.0/24".parse().unwrap()],
    }
    .encode();
    let rogue = String::from_utf8(rogue).unwrap();
    for key in &targets {
        for args in [vec!["put", key.as_str(), rogue.as_str()], vec!["del", key]] {
            let output = etcdctl_as_cluster(&fleet, 1, &args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success() && stderr.contains("permission denied"),
                "c1 could `{}` {key}: {}{stderr}",
                args[0],
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }
    eprintln!(
        "c1's credentials were refused `put` and `del` on {} keys naming c2 (or c10)",
        targets.len()
    );
    // Nothing changed, in etcd or in any map.
    std::thread::sleep(Duration::from_secs(2));
    let after = values(&fleet, "/fleetnet/");
    for (key, value) in &before {
        // (Reports carry live counters: they may change by themselves.)
        let c2s = key.contains("/c2/") || key.ends_with("/c2") || key.ends_with("cluster-ids/2");
        if c2s && !key.contains("/reports/") {
            assert_eq!(after.get(key), Some(value), "{key} changed");
        }
    }
    assert_eq!(
        c3.maps().ipcache().unwrap(),
        c3_before,
        "c3's ipcache changed"
    );
    let c2 = fleet.node("c2/n1");
    for pod in &c2.pods {
        let entry = c3
            .maps()
            .ipcache_lookup(pod.ip)
            .expect("c2's pod in c3's ipcache");
        assert_eq!(entry.tunnel_endpoint, c2.ip.octets(), "{}'s node", pod.id);
        assert_eq!(
            identity::cluster_of(entry.identity),
            2,
            "{}'s identity",
            pod.id
        );
    }
    fleet
        .wait_converged(Duration::from_secs(5))
        .expect("every map as before");
    every_pod_reaches_every_other(&fleet);
}

#[test]
fn records_a_cluster_writes_into_its_own_keys_claiming_anothers_space_are_rejected() {
    let fleet = fleet();
    let c1_identity = fleet.node("c1/n1").maps().endpoints().unwrap()
        [&fleet.node("c1/n1").pods[0].ip.octets()]
        .identity;
    let endpoint = |identity: u32| {
        EndpointRecord {
            v: VERSION,
            identity,
            node: "n9".into(),
            namespace: "default".into(),
            pod: "rogue".into(),
            ports: BTreeMap::new(),
        }
        .encode()
    };
    let c2_space: Vec<(String, Vec<u8>)> = vec![
        (
            keys::node("c1", "n9"),
            NodeRecord {
                v: VERSION,
                ip: Ipv4Addr::new(198, 18, 1, 99),
                pod_cidrs: vec!["10.2.200.0/24".parse().unwrap()],
            }
            .encode(),
        ),
        // At an address of c2's, and with an identity of c2's.
        (
            keys::endpoint("c1", Ipv4Addr::new(10, 2, 1, 99)),
            endpoint(c1_identity),
        ),
        (
            keys::endpoint("c1", Ipv4Addr::new(10, 1, 1, 99)),
            endpoint(identity::make(2, 300)),
        ),
        (
            keys::exported_identity("c1", identity::make(2, 999), "n9"),
            IdentityRecord {
                v: VERSION,
                labels: BTreeMap::from([("app".to_string(), "rogue".to_string())]),
            }
            .encode(),
        ),
        (
            keys::backend(
                "default",
                "web",
                "c1",
                "http.tcp",
                Ipv4Addr::new(10, 2, 1, 11),
                8080,
            ),
            BackendRecord {
                v: VERSION,
                node: "n9".into(),
            }
            .encode(),
        ),
    ];
    // etcd lets c1 write its own keys: only the readers can tell.
    for (key, value) in &c2_space {
        let value = String::from_utf8(value.clone()).unwrap();
        let output = etcdctl_as_cluster(&fleet, 1, &["put", key, &value]);
        assert!(
            output.status.success(),
            "c1 cannot write its own {key}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let expected = [
        ("node", 1.0),
        ("endpoint", 2.0),
        ("identity", 1.0),
        ("backend", 1.0),
    ];
    let started = Instant::now();
    for node in ["c2/n1", "c3/n1"] {
        let node = fleet.node(node);
        for (kind, count) in expected {
            let series = format!(
                r#"fleetnet_mesh_entries_rejected_total{{target_cluster="c1",kind="{kind}"}}"#
            );
            fleetnet_testing::wait_for(
                &format!("{} counting {count} rejected {kind} of c1", node.id),
                Duration::from_secs(10),
                || node.metric(&series).ok().flatten() == Some(count),
            );
        }
        let log = node.log();
        for reason in [
            "rejecting node record: its pod CIDR 10.2.200.0/24 is outside cluster c1's pod CIDRs",
            "rejecting endpoint record: 10.2.1.99 is outside cluster c1's pod CIDRs",
            "rejecting endpoint record: identity 131372 is outside cluster c1's range",
            "rejecting identity record: identity 132071 is outside cluster c1's range",
            "rejecting backend record: 10.2.1.11 is outside cluster c1's pod CIDRs",
        ] {
            assert!(
                log.contains(reason),
                "{}: no warning `{reason}`:\n{log}",
                node.id
            );
        }
        // None of it is programmed: c2's space still resolves to c2.
        let maps = node.maps();
        let ipcache = maps.ipcache().unwrap();
        assert!(
            !ipcache.contains_key(&"10.2.200.0/24".parse().unwrap()),
            "{}: the rogue node's CIDR is programmed",
            node.id
        );
        for ip in [Ipv4Addr::new(10, 2, 1, 99), Ipv4Addr::new(10, 1, 1, 99)] {
            assert!(
                !ipcache.contains_key(&ip.into()),
                "{}: the rogue endpoint {ip} is programmed",
                node.id
            );
        }
        if node.cluster != "c2" {
            let entry = maps.ipcache_lookup(Ipv4Addr::new(10, 2, 1, 99)).unwrap();
            assert_eq!(
                (entry.cluster_id, entry.tunnel_endpoint),
                (2, fleet.node("c2/n1").ip.octets()),
                "{}: c2's address no longer leads to c2",
                node.id
            );
        }
    }
    eprintln!(
        "5 records c1 wrote into its own keys claiming c2's space were rejected and counted by \
         c2's and c3's agents (within {:?} of the last write)",
        started.elapsed()
    );
    // A fresh listing does not count them again.
    fleet.node("c3/n1").kill_agent();
    let c3 = fleet.node("c3/n1");
    c3.start_agent(&agent_binary()).unwrap();
    c3.wait_ready(Duration::from_secs(30)).unwrap();
    assert_eq!(
        c3.metric(r#"fleetnet_mesh_entries_rejected_total{target_cluster="c1",kind="endpoint"}"#)
            .unwrap(),
        Some(2.0),
        "a restarted agent counts each rejected record once"
    );
    fleet
        .wait_converged(Duration::from_secs(20))
        .expect("the members still converge");
    every_pod_reaches_every_other(&fleet);
}

/// An agent whose password etcd refuses stops at once with one sentence,
/// before it touches its node.
#[test]
fn an_agent_whose_etcd_password_is_refused_exits_with_one_sentence() {
    let fleet = FleetInABox::build(FleetSpec {
        etcd_auth: true,
        ..FleetSpec::new(1, 1, 0)
    })
    .expect("building the fleet");
    let host = fleet
        .add_underlay_host("intruder", Ipv4Addr::new(198, 18, 9, 9))
        .unwrap();
    let dir = fleet.workdir.join("intruder");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("password"), "not-the-password\n").unwrap();
    let endpoints: Vec<String> = fleet
        .etcd_endpoints()
        .iter()
        .map(|endpoint| format!("'{endpoint}'"))
        .collect();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: {{ name: c1, id: 1, pod-cidrs: [10.1.0.0/16] }}\n\
             node: {{ name: n9 }}\n\
             etcd: {{ endpoints: [{}], username: {}, password-file: {} }}\n\
             source: {{ kind: manifests, directory: {} }}\n\
             metrics: {{ listen: '' }}\n\
             bpf: {{ pin-dir: /sys/fs/bpf/fleetnet/{}-intruder }}\n",
            endpoints.join(", "),
            etcd_user(1),
            dir.join("password").display(),
            dir.join("manifests").display(),
            fleet.name
        ),
    )
    .unwrap();
    let started = Instant::now();
    let output = host
        .command(agent_binary())
        .unwrap()
        .args(["agent", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the agent ran: {stderr}");
    let sentences: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("fleetnet: "))
        .collect();
    assert_eq!(sentences.len(), 1, "stderr: {stderr}");
    assert!(
        sentences[0].contains("etcd refused user fleetnet-c1")
            && sentences[0].contains("check the user name and the password file"),
        "{}",
        sentences[0]
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/fleetnet/{}-intruder", fleet.name)).exists(),
        "the refused agent touched bpffs"
    );
    eprintln!("refused: {}", sentences[0]);
}

/// Ping between every ordered pair of pods.
fn every_pod_reaches_every_other(fleet: &FleetInABox) {
    let mut failures = Vec::new();
    for (_, src) in fleet.pods() {
        for (_, dst) in fleet.pods().filter(|(_, dst)| dst.id != src.id) {
            if !probe::ping(&src.netns, dst.ip, Duration::from_secs(2)).unwrap_or(false) {
                failures.push(format!("{} -> {}", src.id, dst.id));
            }
        }
    }
    assert!(failures.is_empty(), "unreachable: {failures:?}");
}
