//! The fleet documents against a real etcd (Debian's 3.4) on 127.0.0.1:
//! revision and run numbers handed out once under concurrent writers, one
//! unfinished run at a time, a run written by two parties at once (only
//! the first wins, with its target changes), cluster labels read from the
//! registrations, and documents of another version refused by name.

use std::collections::BTreeSet;

use fleetnet_agent::mesh::registration;
use fleetnet_fleet::{
    model::{Bundle, LiveSettings, RunState, Strategy, Target, VERSION},
    rollout::Action,
    store::{FleetStore, StoreError},
};
use fleetnet_store::{
    self as kv, fleet_keys as keys,
    records::{self, ClusterRecord},
};
use fleetnet_testing::etcd::Etcd;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn store(etcd: &Etcd) -> FleetStore {
    FleetStore::new(kv::connect(&[etcd.endpoint()], None).await.unwrap())
}

fn strategy() -> Strategy {
    serde_yaml::from_str(
        "
name: envs
stages:
  - name: canary
    selector: { matchLabels: { env: canary } }
  - name: prod
    selector: { matchLabels: { env: prod } }
    order-by: ring
",
    )
    .unwrap()
}

async fn register(etcd: &Etcd, name: &str, id: u16, labels: &[(&str, &str)]) {
    let mut client = kv::connect(&[etcd.endpoint()], None).await.unwrap();
    let record = ClusterRecord {
        v: records::VERSION,
        id,
        pod_cidrs: vec![format!("10.{id}.0.0/16").parse().unwrap()],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        routing: Default::default(),
        routing_peers: Default::default(),
    };
    registration::register_record(&mut client, name, &record)
        .await
        .unwrap();
}

#[test]
fn revisions_are_numbered_once_under_concurrent_writers() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let writers = (0..8).map(|i| {
            let endpoint = etcd.endpoint();
            tokio::spawn(async move {
                let client = kv::connect(&[endpoint], None).await.unwrap();
                let bundle = Bundle {
                    settings: LiveSettings {
                        forward_sample: Some(i + 1),
                        ..LiveSettings::default()
                    },
                    ..Bundle::default()
                };
                FleetStore::new(client)
                    .create_revision(bundle, format!("writer {i}"))
                    .await
                    .unwrap()
            })
        });
        let mut numbers = BTreeSet::new();
        for writer in writers {
            let revision = writer.await.unwrap();
            assert!(numbers.insert(revision.number), "{} twice", revision.number);
        }
        assert_eq!(numbers, (1..=8).collect());

        // Each number holds the bundle of the writer that got it.
        let mut store = store(&etcd).await;
        let stored = store.revisions().await.unwrap();
        assert_eq!(stored.len(), 8);
        for revision in stored {
            let writer: u16 = revision.description["writer ".len()..].parse().unwrap();
            assert_eq!(revision.bundle.settings.forward_sample, Some(writer + 1));
        }
        let error = store.revision(9).await.unwrap_err();
        assert_eq!(error.to_string(), "there is no revision 9");
    });
}

#[test]
fn runs_snapshot_their_clusters_and_one_runs_at_a_time() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut store = store(&etcd).await;
        register(&etcd, "c1", 1, &[("env", "canary")]).await;
        register(&etcd, "c2", 2, &[("env", "prod"), ("ring", "2")]).await;
        register(&etcd, "c3", 3, &[("env", "prod"), ("ring", "1")]).await;
        register(&etcd, "c4", 4, &[("env", "lab")]).await;
        let revision = store
            .create_revision(Bundle::default(), String::new())
            .await
            .unwrap();

        let error = store.start_run(revision.number, "envs").await.unwrap_err();
        assert_eq!(error.to_string(), "there is no strategy envs");
        store.put_strategy(&strategy()).await.unwrap();
        let error = store.start_run(7, "envs").await.unwrap_err();
        assert_eq!(error.to_string(), "there is no revision 7");

        let run = store.start_run(revision.number, "envs").await.unwrap();
        assert_eq!(run.id, 1);
        let members: Vec<Vec<&str>> = run
            .stages
            .iter()
            .map(|s| s.clusters.iter().map(|c| c.name.as_str()).collect())
            .collect();
        assert_eq!(members, [vec!["c1"], vec!["c3", "c2"]], "ring order");
        assert_eq!(run.unselected, ["c4"]);

        // The stored strategy changes; the run keeps its copy.
        let mut changed = strategy();
        changed.stages.truncate(1);
        store.put_strategy(&changed).await.unwrap();
        let (stored, _) = store.run(1).await.unwrap();
        assert_eq!(stored.strategy, strategy());

        let error = store.start_run(revision.number, "envs").await.unwrap_err();
        assert!(
            matches!(error, StoreError::Conflict(_)) && error.to_string().starts_with("run 1 is"),
            "{error}"
        );
        store
            .update_run(1, |run| {
                run.state = RunState::Completed;
                Ok(Vec::new())
            })
            .await
            .unwrap();
        assert_eq!(
            store.start_run(revision.number, "envs").await.unwrap().id,
            2
        );
    });
}

#[test]
fn of_two_writers_of_a_run_only_the_first_commits() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut store = store(&etcd).await;
        register(&etcd, "c1", 1, &[("env", "canary")]).await;
        let revision = store
            .create_revision(Bundle::default(), String::new())
            .await
            .unwrap();
        store.put_strategy(&strategy()).await.unwrap();
        store.start_run(revision.number, "envs").await.unwrap();

        // The controller read the run, then `rollout stop` wrote it.
        let (mut controller_copy, read_at) = store.run(1).await.unwrap();
        let stopped = store
            .update_run(1, |run| {
                run.state = RunState::Stopped;
                Ok(Vec::new())
            })
            .await
            .unwrap();
        assert_eq!(stopped.state, RunState::Stopped);

        // The controller's commit, from its older read, loses: neither the
        // run nor the target it decided is written.
        controller_copy.stages[0].name = "moved".into();
        let target = Target {
            v: VERSION,
            revision: revision.number,
            run: 1,
        };
        let set = Action::Set {
            cluster: "c1".into(),
            target,
        };
        assert!(
            !store
                .commit(&controller_copy, read_at, std::slice::from_ref(&set))
                .await
                .unwrap()
        );
        let (stored, now_at) = store.run(1).await.unwrap();
        assert_eq!(stored.state, RunState::Stopped);
        assert!(store.targets().await.unwrap().is_empty());

        // From a fresh read it commits, run and target together.
        assert!(store.commit(&stored, now_at, &[set]).await.unwrap());
        assert_eq!(store.targets().await.unwrap()["c1"], target);
        let restore = Action::Restore {
            cluster: "c1".into(),
            previous: None,
        };
        let (stored, now_at) = store.run(1).await.unwrap();
        assert!(store.commit(&stored, now_at, &[restore]).await.unwrap());
        assert!(store.targets().await.unwrap().is_empty());
    });
}

#[test]
fn documents_of_another_version_are_refused_by_name() {
    let etcd = Etcd::start_local().unwrap();
    runtime().block_on(async {
        let mut store = store(&etcd).await;
        let mut client = store.client();
        client
            .put(
                keys::strategy("future"),
                r#"{"v":2,"name":"future","stages":[]}"#,
                None,
            )
            .await
            .unwrap();
        let error = store.strategy("future").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "/fleetnet/fleet/v1/strategies/future: document version 2 is not one this build reads (1); upgrade fleetnet"
        );
        // Lists skip it rather than fail on it.
        store.put_strategy(&strategy()).await.unwrap();
        let names: Vec<String> = store
            .strategies()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["envs"]);

        let mut bad = strategy();
        bad.stages[1].name = "canary".into();
        let error = store.put_strategy(&bad).await.unwrap_err();
        assert_eq!(error.to_string(), "stage canary appears twice");
    });
}
