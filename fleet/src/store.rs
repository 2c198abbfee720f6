//! The fleet documents in etcd. Numbers come from sequence keys claimed
//! with compare-and-swap; a run and the target changes it decides are
//! written in one transaction, conditional on the run being unchanged
//! since it was read, so the controller and the CLI never both win.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tracing::warn;

use fleetnet_policy::identity::Labels;
use fleetnet_store::{
    EtcdError, fleet_keys as keys, keys as mesh_keys,
    records::{ClusterRecord, Record},
    time::unix_now,
};

use crate::{
    model::{self, Bundle, Report, Revision, Run, Strategy, Target, VERSION},
    render,
    rollout::{self, Action, View},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

impl From<etcd_client::Error> for StoreError {
    fn from(error: etcd_client::Error) -> Self {
        Self::Etcd(error.into())
    }
}

/// A document and the etcd revision it was last written at.
pub type Versioned<T> = (T, i64);

pub struct FleetStore {
    client: Client,
}

impl FleetStore {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Stores `bundle` as the next revision.
    pub async fn create_revision(
        &mut self,
        bundle: Bundle,
        description: String,
    ) -> Result<Revision, StoreError> {
        let mut revision = Revision {
            v: VERSION,
            number: 0,
            created_unix: unix_now(),
            description,
            bundle,
        };
        let size = model::encode(&revision).len();
        if size > model::MAX_DOCUMENT_BYTES {
            return Err(StoreError::Invalid(format!(
                "the revision is {size} bytes, above the {}-byte limit; split its policies over revisions",
                model::MAX_DOCUMENT_BYTES
            )));
        }
        revision.number = self
            .claim_next(&keys::revision_sequence(), |n| {
                let mut revision = revision.clone();
                revision.number = n;
                (keys::revision(n), model::encode(&revision))
            })
            .await?;
        Ok(revision)
    }

    /// Writes the next number of `sequence` and the document `make` builds
    /// for it, in one transaction; retries when another writer won.
    async fn claim_next(
        &mut self,
        sequence: &str,
        make: impl Fn(u64) -> (String, Vec<u8>),
    ) -> Result<u64, StoreError> {
        for _ in 0..64 {
            let current = self.client.get(sequence, None).await?;
            let (last, guard) = match current.kvs().first() {
                Some(kv) => {
                    let last: u64 = String::from_utf8_lossy(kv.value()).parse().unwrap_or(0);
                    let guard =
                        Compare::mod_revision(sequence, CompareOp::Equal, kv.mod_revision());
                    (last, guard)
                }
                None => (0, Compare::create_revision(sequence, CompareOp::Equal, 0)),
            };
            let next = last + 1;
            let (key, value) = make(next);
            let txn = Txn::new()
                .when([
                    guard,
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(sequence, next.to_string(), None),
                    TxnOp::put(key, value, None),
                ]);
            if self.client.txn(txn).await?.succeeded() {
                return Ok(next);
            }
        }
        Err(StoreError::Conflict(format!(
            "{sequence}: too many concurrent writers; try again"
        )))
    }

    pub async fn revision(&mut self, number: u64) -> Result<Revision, StoreError> {
        self.get(&keys::revision(number))
            .await?
            .map(|(revision, _)| revision)
            .ok_or_else(|| StoreError::NotFound(format!("there is no revision {number}")))
    }

    pub async fn revisions(&mut self) -> Result<Vec<Revision>, StoreError> {
        Ok(self
            .list(&keys::revisions())
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// Creates or replaces a strategy (a run keeps the copy it started with).
    pub async fn put_strategy(&mut self, strategy: &Strategy) -> Result<(), StoreError> {
        strategy.validate().map_err(StoreError::Invalid)?;
        self.client
            .put(
                keys::strategy(&strategy.name),
                model::encode(strategy),
                None,
            )
            .await?;
        Ok(())
    }

    pub async fn strategy(&mut self, name: &str) -> Result<Strategy, StoreError> {
        self.get(&keys::strategy(name))
            .await?
            .map(|(strategy, _)| strategy)
            .ok_or_else(|| StoreError::NotFound(format!("there is no strategy {name}")))
    }

    pub async fn strategies(&mut self) -> Result<Vec<Strategy>, StoreError> {
        Ok(self
            .list(&keys::strategies())
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// Starts a run of `revision` with strategy `name` over the clusters
    /// registered now. Refused while another run is unfinished.
    pub async fn start_run(&mut self, revision: u64, name: &str) -> Result<Run, StoreError> {
        let agent = self.revision(revision).await?.bundle.agent;
        let strategy = self.strategy(name).await?;
        if let Some((busy, _)) = self
            .runs()
            .await?
            .into_iter()
            .find(|(r, _)| !r.state.is_finished())
        {
            return Err(StoreError::Conflict(format!(
                "run {} is {}; let it finish, stop and roll it back, or wait before starting another",
                busy.id,
                render::lower(busy.state)
            )));
        }
        let clusters = self.clusters().await?;
        let started = unix_now();
        // Resolved once, so the claim below can build the document for
        // whatever number it gets.
        let template = rollout::start(0, revision, &strategy, &clusters, started)
            .map(|run| Run { agent, ..run })
            .map_err(StoreError::Invalid)?;
        let id = self
            .claim_next(&keys::run_sequence(), |id| {
                let mut run = template.clone();
                run.id = id;
                (keys::run(id), model::encode(&run))
            })
            .await?;
        Ok(Run { id, ..template })
    }

    /// Run `id`; a damaged one (see [`Run::check`]) is an error.
    pub async fn run(&mut self, id: u64) -> Result<Versioned<Run>, StoreError> {
        let key = keys::run(id);
        let (run, revision) = self
            .get::<Run>(&key)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("there is no run {id}")))?;
        run.check()
            .map_err(|error| StoreError::Invalid(format!("{key}: {error}")))?;
        Ok((run, revision))
    }

    /// Every run; damaged ones are left out, with a warning.
    pub async fn runs(&mut self) -> Result<Vec<Versioned<Run>>, StoreError> {
        let runs: Vec<Versioned<Run>> = self.list(&keys::runs()).await?;
        Ok(runs
            .into_iter()
            .filter(|(run, _)| {
                run.check()
                    .map_err(|error| warn!("ignoring {}: {error}", keys::run(run.id)))
                    .is_ok()
            })
            .collect())
    }

    /// Writes `run` and `actions` if the run is still at `read_at`; false
    /// when someone changed it meanwhile.
    pub async fn commit(
        &mut self,
        run: &Run,
        read_at: i64,
        actions: &[Action],
    ) -> Result<bool, StoreError> {
        let key = keys::run(run.id);
        let mut operations = vec![TxnOp::put(key.clone(), model::encode(run), None)];
        for action in actions {
            operations.push(match action {
                Action::Set { cluster, target } => {
                    TxnOp::put(keys::target(cluster), model::encode(target), None)
                }
                Action::Restore {
                    cluster,
                    previous: Some(revision),
                } => {
                    let target = Target {
                        v: VERSION,
                        revision: *revision,
                        run: 0,
                    };
                    TxnOp::put(keys::target(cluster), model::encode(&target), None)
                }
                Action::Restore {
                    cluster,
                    previous: None,
                } => TxnOp::delete(keys::target(cluster), None),
            });
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, read_at)])
            .and_then(operations);
        Ok(self.client.txn(txn).await?.succeeded())
    }

    /// Reads, changes and commits a run, retrying when someone else wrote
    /// it meanwhile.
    pub async fn update_run(
        &mut self,
        id: u64,
        change: impl Fn(&mut Run) -> Result<Vec<Action>, String>,
    ) -> Result<Run, StoreError> {
        for _ in 0..16 {
            let (mut run, read_at) = self.run(id).await?;
            let actions = change(&mut run).map_err(StoreError::Invalid)?;
            if self.commit(&run, read_at, &actions).await? {
                return Ok(run);
            }
        }
        Err(StoreError::Conflict(format!(
            "run {id} kept changing; try again"
        )))
    }

    /// Everything the controller decides from.
    pub async fn view(&mut self) -> Result<View, StoreError> {
        let mut view = View::default();
        let (nodes, _) =
            fleetnet_store::list(&mut self.client, &format!("{}nodes/", mesh_keys::PREFIX)).await?;
        for stored in nodes {
            if let Some(mesh_keys::Key::Node { cluster, node }) = mesh_keys::parse(&stored.key) {
                view.nodes
                    .entry(cluster)
                    .or_insert_with(BTreeSet::new)
                    .insert(node);
            }
        }
        let (reports, _) = fleetnet_store::list(&mut self.client, &keys::reports()).await?;
        for stored in reports {
            if let (Some(agent), Ok(report)) = (
                keys::parse_report(&stored.key),
                model::decode::<Report>(&stored.value),
            ) {
                view.reports.insert(agent, report);
            }
        }
        view.targets = self.targets().await?;
        Ok(view)
    }

    pub async fn targets(&mut self) -> Result<BTreeMap<String, Target>, StoreError> {
        let (targets, _) = fleetnet_store::list(&mut self.client, &keys::targets()).await?;
        Ok(targets
            .into_iter()
            .filter_map(|stored| {
                let cluster = stored.key.strip_prefix(&keys::targets())?.to_string();
                Some((cluster, model::decode(&stored.value).ok()?))
            })
            .collect())
    }

    /// Registered clusters and their labels.
    pub async fn clusters(&mut self) -> Result<BTreeMap<String, Labels>, StoreError> {
        let (records, _) =
            fleetnet_store::list(&mut self.client, &format!("{}clusters/", mesh_keys::PREFIX))
                .await?;
        Ok(records
            .into_iter()
            .filter_map(|stored| match mesh_keys::parse(&stored.key) {
                Some(mesh_keys::Key::Cluster { name }) => {
                    let record = ClusterRecord::decode(&stored.value).ok()?;
                    Some((name, record.labels))
                }
                _ => None,
            })
            .collect())
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let response = self.client.get(key, None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let document = model::decode(kv.value())
            .map_err(|error| StoreError::Invalid(format!("{key}: {error}")))?;
        Ok(Some((document, kv.mod_revision())))
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &mut self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, StoreError> {
        let (values, _) = fleetnet_store::list(&mut self.client, prefix).await?;
        Ok(values
            .into_iter()
            .filter_map(|stored| Some((model::decode(&stored.value).ok()?, stored.mod_revision)))
            .collect())
    }
}
