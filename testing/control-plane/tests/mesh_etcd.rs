//! The mesh control plane against a real etcd (Debian's 3.4) started by
//! each test on 127.0.0.1: registration conflicts, identity allocation
//! races between agents, identity collection, leases expiring and being
//! taken over, a watch that fell behind compaction, and an etcd outage.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use etcd_client::Client;
use fleetnet_agent::mesh::{
    identity,
    registration::{self, RegistrationError},
    session::Session,
    state::{MeshState, Viewpoint},
    watcher::{self, MeshEvent},
};
use fleetnet_store::{self as kv, StoredValue, keys};
use fleetnet_testing::etcd::{Etcd, EtcdTls};
use tokio::sync::mpsc;

fn runtime() -> tokio::runtime::Runtime {
    // The agent's own log lines, shown for failing tests.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn client(etcd: &Etcd) -> Client {
    kv::connect(&[etcd.endpoint()], None).await.unwrap()
}

/// Polls `condition` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// etcd's revision now (read through any key).
async fn current_revision(client: &mut Client) -> i64 {
    client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

async fn exists(client: &mut Client, key: &str) -> bool {
    client
        .get(key, None)
        .await
        .is_ok_and(|response| !response.kvs().is_empty())
}

#[test]
fn a_cluster_name_and_id_are_claimed_once() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut client = client(&etcd).await;
        let cidrs = ["10.1.0.0/16".parse().unwrap()];
        registration::register(&mut client, "c1", 1, &cidrs)
            .await
            .unwrap();
        // Every agent of c1 registers; all of them succeed.
        registration::register(&mut client, "c1", 1, &cidrs)
            .await
            .unwrap();

        let error = registration::register(&mut client, "c1", 2, &cidrs)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                RegistrationError::NameTaken {
                    registered_id: 1,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "cluster name c1 is already registered in the mesh with id 1, not 2; \
             give this cluster another name or the id it was registered with"
        );
        let error = registration::register(&mut client, "c9", 1, &cidrs)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cluster id 1 is already claimed by cluster c1; give cluster c9 an unused id"
        );
        assert!(
            !exists(&mut client, &keys::cluster("c9")).await,
            "a refused cluster leaves nothing behind"
        );
    });
}

/// A member (joined with `fleetnet cluster join`) registers only with the
/// id it joined with, and not at all once retired: a stray agent of a
/// retired cluster never brings it back.
#[test]
fn a_member_registers_as_joined_and_never_once_retired() {
    use fleetnet_store::records::{MemberRecord, MemberState, Record, VERSION};
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut client = client(&etcd).await;
        let cidrs = ["10.5.0.0/16".parse().unwrap()];
        let mut member = MemberRecord {
            v: VERSION,
            id: 5,
            pod_cidrs: cidrs.to_vec(),
            labels: Default::default(),
            state: MemberState::Joined,
            generation: 1,
            since: 0.0,
        };
        client
            .put(keys::member("c5"), member.encode(), None)
            .await
            .unwrap();
        let error = registration::register(&mut client, "c5", 6, &cidrs)
            .await
            .unwrap_err();
        assert!(
            matches!(error, RegistrationError::NotAsJoined { joined_id: 5, .. }),
            "{error:?}"
        );
        registration::register(&mut client, "c5", 5, &cidrs)
            .await
            .unwrap();
        client.delete(keys::cluster("c5"), None).await.unwrap();
        client.delete(keys::cluster_id(5), None).await.unwrap();
        member.state = MemberState::Retired;
        client
            .put(keys::member("c5"), member.encode(), None)
            .await
            .unwrap();
        let error = registration::register(&mut client, "c5", 5, &cidrs)
            .await
            .unwrap_err();
        assert!(
            matches!(error, RegistrationError::Retired { .. }),
            "{error:?}"
        );
        assert!(
            !exists(&mut client, &keys::cluster("c5")).await,
            "a retired cluster registered again"
        );
    });
}

/// etcd with TLS and client certificates: agents configured with the CA and
/// their certificate work; without a client certificate they are refused.
#[test]
fn an_etcd_requiring_client_certificates_is_reachable_with_tls_files() {
    let dir = std::env::temp_dir().join(format!("fleetnet-tls-{}", std::process::id()));
    let tls = EtcdTls::generate(&dir).unwrap();
    let etcd = Etcd::start_local_tls(tls.clone()).unwrap();
    assert!(etcd.endpoint().starts_with("https://"));
    runtime().block_on(async {
        let files = kv::TlsFiles {
            ca_file: tls.ca.clone(),
            cert_file: Some(tls.client_cert.clone()),
            key_file: Some(tls.client_key.clone()),
        };
        let mut client = kv::connect(&[etcd.endpoint()], Some(&files)).await.unwrap();
        registration::register(&mut client, "c1", 1, &["10.1.0.0/16".parse().unwrap()])
            .await
            .unwrap();
        assert!(exists(&mut client, &keys::cluster("c1")).await);

        let anonymous = kv::TlsFiles {
            cert_file: None,
            key_file: None,
            ..files
        };
        let mut stranger = kv::connect(&[etcd.endpoint()], Some(&anonymous))
            .await
            .unwrap();
        let refused =
            registration::register(&mut stranger, "c2", 2, &["10.2.0.0/16".parse().unwrap()]).await;
        assert!(
            refused.is_err(),
            "etcd accepted a client without a certificate"
        );
    });
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Eight agents allocate identities for the same five label sets at once:
/// each label set gets exactly one id, every agent agrees on it, and the
/// ids are distinct and in the cluster's range.
#[test]
fn concurrent_agents_agree_on_one_identity_per_label_set() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let label_sets: Vec<fleetnet_policy::identity::Labels> = (0..5)
            .map(|i| {
                [
                    ("app".to_string(), format!("svc-{i}")),
                    ("fleetnet.io/cluster".into(), "c3".into()),
                ]
                .into()
            })
            .collect();
        let mut agents = Vec::new();
        for _ in 0..8 {
            let mut client = client(&etcd).await;
            let label_sets = label_sets.clone();
            agents.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for labels in &label_sets {
                    ids.push(
                        identity::allocate(&mut client, "c3", 3, labels)
                            .await
                            .unwrap(),
                    );
                }
                ids
            }));
        }
        let mut answers = BTreeSet::new();
        for agent in agents {
            answers.insert(agent.await.unwrap());
        }
        assert_eq!(answers.len(), 1, "agents disagree: {answers:?}");
        let ids = answers.into_iter().next().unwrap();
        assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 5, "{ids:?}");
        for id in &ids {
            assert_eq!(dataplane_common::identity::cluster_of(*id), 3);
            assert!(id & 0xffff >= u32::from(fleetnet_policy::identity::FIRST_INDEX));
        }
        let mut client = client(&etcd).await;
        let (masters, _) = kv::list(&mut client, &keys::identities_of("c3"))
            .await
            .unwrap();
        assert_eq!(masters.len(), 5, "one master record per label set");
    });
}

/// An identity referenced by a node survives collection; once the node's
/// lease is gone and the grace period passed, it is released, and
/// allocating the labels again works.
#[test]
fn unused_identities_are_released_after_the_grace_period() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut client = client(&etcd).await;
        let labels: fleetnet_policy::identity::Labels =
            [("app".to_string(), "web".to_string())].into();
        let id = identity::allocate(&mut client, "c1", 1, &labels)
            .await
            .unwrap();
        let lease = client.lease_grant(30, None).await.unwrap().id();
        let reference = keys::identity_ref("c1", id, "n1");
        client
            .put(
                reference.clone(),
                "",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();

        let grace = Duration::from_millis(500);
        let mut collector = identity::IdentityCollector::default();
        assert!(
            collector
                .collect(&mut client, "c1", Duration::ZERO)
                .await
                .unwrap()
                .is_empty(),
            "referenced"
        );

        client.lease_revoke(lease).await.unwrap();
        assert!(
            collector
                .collect(&mut client, "c1", grace)
                .await
                .unwrap()
                .is_empty(),
            "grace period starts"
        );
        tokio::time::sleep(grace).await;
        assert_eq!(
            collector.collect(&mut client, "c1", grace).await.unwrap(),
            vec![id]
        );
        assert!(!exists(&mut client, &keys::identity("c1", id)).await);
        assert!(
            !exists(
                &mut client,
                &keys::identity_index("c1", &identity::labels_hash(&labels))
            )
            .await
        );

        let again = identity::allocate(&mut client, "c1", 1, &labels)
            .await
            .unwrap();
        assert!(exists(&mut client, &keys::identity("c1", again)).await);
    });
}

/// A session's keys live under its lease: they vanish within the TTL when
/// the agent dies, and a lost lease is replaced with every key rewritten.
#[test]
fn session_keys_follow_the_lease() {
    let etcd = Etcd::start_local().unwrap();
    let ttl = Duration::from_secs(2);
    let key = keys::node("c1", "n1");
    // An agent that dies: its runtime (and session task) is dropped.
    {
        let rt = runtime();
        rt.block_on(async {
            let initial = BTreeMap::from([(key.clone(), b"node".to_vec())]);
            let session = Session::start(client(&etcd).await, "c1", "n1", ttl, initial);
            let mut status = session.status();
            status.wait_for(|status| status.synced).await.unwrap();
            assert!(exists(&mut client(&etcd).await, &key).await);
        });
        rt.shutdown_background();
    }
    runtime().block_on(async {
        let mut checker = client(&etcd).await;
        let started = Instant::now();
        assert!(
            eventually(ttl * 3, async || !exists(&mut checker, &key).await).await,
            "key outlived its lease"
        );
        eprintln!(
            "key gone {:?} after the agent died (TTL {ttl:?})",
            started.elapsed()
        );

        // A live session whose lease is revoked behind its back.
        let initial = BTreeMap::from([(key.clone(), b"node".to_vec())]);
        let session = Session::start(client(&etcd).await, "c1", "n1", ttl, initial);
        let mut status = session.status();
        status.wait_for(|status| status.synced).await.unwrap();
        let lease = status.borrow().lease.unwrap();
        session.put(keys::identity_ref("c1", 65800, "n1"), Vec::new());
        checker.lease_revoke(lease).await.unwrap();
        assert!(!exists(&mut checker, &key).await);
        let restored = eventually(ttl * 3, async || {
            exists(&mut checker, &key).await
                && exists(&mut checker, &keys::identity_ref("c1", 65800, "n1")).await
        })
        .await;
        assert!(
            restored,
            "the session did not take a new lease and rewrite its keys"
        );
        assert_ne!(session.status().borrow().lease, Some(lease));
        assert!(session.bytes_written() > 0);
    });
}

/// A session started after a restart removes the keys its node left that
/// it no longer wants, and keeps those it does.
#[test]
fn a_restarted_session_takes_over_and_removes_stale_keys() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut writer = client(&etcd).await;
        let endpoint = |pod: &str, node: &str| {
            format!(
                r#"{{"v":1,"identity":65792,"node":"{node}","namespace":"default","pod":"{pod}"}}"#
            )
        };
        let mine_kept = keys::endpoint("c1", "10.1.1.11".parse().unwrap());
        let mine_stale = keys::endpoint("c1", "10.1.1.12".parse().unwrap());
        let other_node = keys::endpoint("c1", "10.1.2.11".parse().unwrap());
        writer
            .put(mine_kept.clone(), endpoint("a", "n1"), None)
            .await
            .unwrap();
        writer
            .put(mine_stale.clone(), endpoint("b", "n1"), None)
            .await
            .unwrap();
        writer
            .put(other_node.clone(), endpoint("c", "n2"), None)
            .await
            .unwrap();

        let initial = BTreeMap::from([(mine_kept.clone(), endpoint("a", "n1").into_bytes())]);
        let session = Session::start(
            client(&etcd).await,
            "c1",
            "n1",
            Duration::from_secs(5),
            initial,
        );
        session
            .status()
            .wait_for(|status| status.synced)
            .await
            .unwrap();
        assert!(exists(&mut writer, &mine_kept).await);
        assert!(
            !exists(&mut writer, &mine_stale).await,
            "stale key of this node survived"
        );
        assert!(
            exists(&mut writer, &other_node).await,
            "another node's key was touched"
        );
    });
}

/// Only one agent of a cluster holds the leader key; when it dies, another
/// takes over within the TTL.
#[test]
fn one_leader_per_cluster_and_a_successor_when_it_dies() {
    let etcd = Etcd::start_local().unwrap();
    let ttl = Duration::from_secs(2);
    let first = runtime();
    first.block_on(async {
        let session = Session::start(client(&etcd).await, "c1", "n1", ttl, BTreeMap::new());
        session.campaign();
        session
            .status()
            .wait_for(|status| status.leader)
            .await
            .unwrap();
    });
    runtime().block_on(async {
        let second = Session::start(client(&etcd).await, "c1", "n2", ttl, BTreeMap::new());
        second.campaign();
        tokio::time::sleep(ttl).await;
        assert!(!second.status().borrow().leader, "two leaders at once");
        first.shutdown_background();
        let mut status = second.status();
        let took_over =
            tokio::time::timeout(ttl * 4, status.wait_for(|status| status.leader)).await;
        assert!(took_over.is_ok(), "no successor after the leader died");
    });
}

fn listing_state(values: Vec<StoredValue>) -> BTreeMap<String, Vec<u8>> {
    values
        .into_iter()
        .map(|stored| (stored.key, stored.value))
        .collect()
}

/// A watch resumed from a revision that was compacted away lists again,
/// and the listing reflects every change made meanwhile.
#[test]
fn a_watch_behind_compaction_lists_again() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut writer = client(&etcd).await;
        for i in 0..5 {
            writer
                .put(keys::node("c2", &format!("n{i}")), "x", None)
                .await
                .unwrap();
        }
        let (_, seen) = kv::list(&mut writer, keys::PREFIX).await.unwrap();
        writer.delete(keys::node("c2", "n0"), None).await.unwrap();
        writer.put(keys::node("c2", "n9"), "y", None).await.unwrap();
        let latest = current_revision(&mut writer).await;
        writer.compact(latest, None).await.unwrap();

        let (events, mut received) = mpsc::channel(64);
        tokio::spawn(watcher::resume(
            client(&etcd).await,
            "c1".into(),
            seen,
            events,
        ));
        let first = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .unwrap()
            .unwrap();
        let MeshEvent::Listing(values) = first else {
            panic!("expected a fresh listing after compaction, got {first:?}");
        };
        let (now, _) = kv::list(&mut writer, keys::PREFIX).await.unwrap();
        assert_eq!(listing_state(values), listing_state(now));

        // And the new watch delivers later changes.
        writer
            .put(keys::node("c2", "n10"), "z", None)
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(next, MeshEvent::Update(_)), "{next:?}");
    });
}

/// etcd goes away: the watcher says so and the receiver's state stays as it
/// was; etcd comes back with changes: the state is listed afresh and holds
/// exactly what etcd holds.
#[test]
fn an_etcd_outage_keeps_the_last_state_and_recovery_leaves_nothing_stale() {
    let mut etcd = Etcd::start_local().unwrap();
    let rt = runtime();
    let (events, mut received) = mpsc::channel(1024);
    let local = Viewpoint {
        cluster: "c1".into(),
        cluster_id: 1,
        pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        node: "n1".into(),
        routing: Default::default(),
        routing_peers: Default::default(),
    };
    let mut state = MeshState::new(local);
    let node = |ip: &str, cidr: &str| format!(r#"{{"v":1,"ip":"{ip}","pod_cidrs":["{cidr}"]}}"#);
    rt.block_on(async {
        let mut writer = client(&etcd).await;
        registration::register(&mut writer, "c2", 2, &["10.2.0.0/16".parse().unwrap()])
            .await
            .unwrap();
        writer
            .put(
                keys::node("c2", "n1"),
                node("198.18.2.11", "10.2.1.0/24"),
                None,
            )
            .await
            .unwrap();
        writer
            .put(
                keys::node("c2", "n2"),
                node("198.18.2.12", "10.2.2.0/24"),
                None,
            )
            .await
            .unwrap();
        tokio::spawn(watcher::run(client(&etcd).await, "c1".into(), events));
        loop {
            let event = received.recv().await.unwrap();
            apply(&mut state, event);
            if state.ipcache().len() == 2 {
                break;
            }
        }
    });
    etcd.kill();
    rt.block_on(async {
        let event = tokio::time::timeout(Duration::from_secs(30), received.recv()).await;
        assert_eq!(event.ok().flatten(), Some(MeshEvent::Disconnected));
        apply(&mut state, MeshEvent::Disconnected);
        assert_eq!(state.ipcache().len(), 2, "state kept through the outage");
    });
    etcd.restart().unwrap();
    rt.block_on(async {
        let mut writer = client(&etcd).await;
        writer.delete(keys::node("c2", "n1"), None).await.unwrap();
        writer
            .put(
                keys::node("c2", "n3"),
                node("198.18.2.13", "10.2.3.0/24"),
                None,
            )
            .await
            .unwrap();
        let recovered = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let event = received.recv().await.unwrap();
                apply(&mut state, event);
                let cidrs: Vec<String> = state.ipcache().keys().map(|c| c.to_string()).collect();
                if cidrs == ["10.2.2.0/24", "10.2.3.0/24"] {
                    break;
                }
            }
        })
        .await;
        assert!(
            recovered.is_ok(),
            "state after recovery: {:?}",
            state.ipcache().keys().collect::<Vec<_>>()
        );
    });
}

fn apply(state: &mut MeshState, event: MeshEvent) {
    match event {
        MeshEvent::Listing(values) => {
            state.replace(values);
        }
        MeshEvent::Update(update) => {
            state.apply(update);
        }
        MeshEvent::Disconnected => {}
    }
}

/// A burst of changes (a node's pods starting) goes out in transactions
/// of up to 128 keys, not a put and an etcd revision each; a put and a
/// delete of the same key in one burst leave the key deleted.
#[test]
fn a_burst_of_changes_is_written_in_few_transactions() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut checker = client(&etcd).await;
        let initial = BTreeMap::from([(keys::node("c1", "n1"), b"node".to_vec())]);
        let session = Session::start(
            client(&etcd).await,
            "c1",
            "n1",
            Duration::from_secs(5),
            initial,
        );
        let mut status = session.status();
        status.wait_for(|status| status.synced).await.unwrap();
        let before = current_revision(&mut checker).await;
        let burst = 1000u32;
        for n in 0..burst {
            let ip = std::net::Ipv4Addr::from(0x0a01_0000 + n);
            session.put(keys::endpoint("c1", ip), format!("{n}").into_bytes());
        }
        let gone = keys::endpoint("c1", std::net::Ipv4Addr::new(10, 1, 0, 7));
        session.delete(gone.clone());
        let prefix = keys::endpoints_of("c1");
        let all_written = eventually(Duration::from_secs(10), async || {
            let options = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            let count = checker
                .get(prefix.as_str(), Some(options))
                .await
                .unwrap()
                .count();
            count == i64::from(burst) - 1
        })
        .await;
        assert!(all_written, "the burst never landed whole");
        assert!(
            !exists(&mut checker, &gone).await,
            "the deleted key is back"
        );
        let after = current_revision(&mut checker).await;
        let revisions = after - before;
        eprintln!("{burst} puts and a delete: {revisions} etcd revisions");
        assert!(
            revisions < i64::from(burst) / 10,
            "{revisions} revisions for {burst} puts: not batched"
        );
    });
}
