//! `fleetnet fleet controller`: moves runs forward. Any number may run;
//! one holds the controller key (under its lease) and acts, the others
//! wait to take over. Everything a run needs lives in its document, so a
//! new controller goes on where the last one stopped.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::{
    keys,
    model::{ClusterState, Gate, Run, RunState, StageState},
    render, rollout,
    store::{FleetStore, StoreError},
};
use crate::clock::unix_now;
use crate::{
    mesh::etcd::{self, Credentials, EtcdError, TlsFiles},
    metrics::{
        Seconds,
        server::{self, OPENMETRICS, TEXT},
    },
};

pub struct ControllerConfig {
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// The etcd user to log in as, if etcd has authentication enabled.
    pub user: Option<Credentials>,
    /// This controller's name in the controller key.
    pub name: String,
    pub lease_ttl: Duration,
    /// How often runs are moved.
    pub interval: Duration,
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("cannot serve metrics on {address}: {source}")]
    Metrics {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for termination signals: {0}")]
    Signals(std::io::Error),
}

pub async fn run(config: ControllerConfig) -> Result<(), ControllerError> {
    let metrics = Arc::new(ControllerMetrics::default());
    if let Some(address) = config.metrics {
        let shown = metrics.clone();
        server::serve_with(
            address,
            Arc::new(move |target: &str| match target {
                "/metrics" => ("200 OK", OPENMETRICS, shown.render()),
                "/healthz" => ("200 OK", TEXT, "ok\n".into()),
                _ => ("404 Not Found", TEXT, "not found\n".into()),
            }),
        )
        .await
        .map_err(|source| ControllerError::Metrics { address, source })?;
        info!(%address, "serving controller metrics");
    }
    let client =
        etcd::connect_as(&config.endpoints, config.tls.as_ref(), config.user.as_ref()).await?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ControllerError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ControllerError::Signals)?;
    let stop = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            held = campaign(client.clone(), &config) => match held {
                Ok(Some(lease)) => {
                    info!(name = %config.name, "holding the controller key; moving runs");
                    metrics.leader.set(1);
                    let stopped = tokio::select! {
                        () = &mut stop => true,
                        () = lead(client.clone(), lease, &config, &metrics) => false,
                    };
                    metrics.leader.set(0);
                    if stopped {
                        // Hand over at once rather than after the lease TTL.
                        let _ = client.clone().lease_revoke(lease).await;
                        return Ok(());
                    }
                    warn!("lost the controller key; campaigning again");
                }
                Ok(None) => tokio::time::sleep(config.interval).await,
                Err(error) => {
                    warn!("controller election: {error}; retrying");
                    tokio::time::sleep(config.interval).await;
                }
            },
        }
    }
}

/// Takes the controller key if nobody holds it; the lease when taken.
async fn campaign(
    mut client: Client,
    config: &ControllerConfig,
) -> Result<Option<i64>, etcd_client::Error> {
    let ttl = config.lease_ttl.as_secs().max(2) as i64;
    let lease = client.lease_grant(ttl, None).await?.id();
    let key = keys::controller();
    let claim = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            config.name.clone(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )]);
    if client.txn(claim).await?.succeeded() {
        Ok(Some(lease))
    } else {
        let _ = client.lease_revoke(lease).await;
        Ok(None)
    }
}

/// Moves runs while the lease lives; returns when it is lost.
async fn lead(client: Client, lease: i64, config: &ControllerConfig, metrics: &ControllerMetrics) {
    let Ok((mut keeper, mut stream)) = client.clone().lease_keep_alive(lease).await else {
        return;
    };
    let mut store = FleetStore::new(client);
    let mut keepalive = tokio::time::interval(config.lease_ttl / 3);
    let mut tick = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                let alive = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match tokio::time::timeout(Duration::from_secs(5), alive).await {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                    _ => return,
                }
            }
            _ = tick.tick() => {
                if let Err(error) = step(&mut store, metrics).await {
                    warn!("moving runs: {error}");
                }
            }
        }
    }
}

/// One pass over every running run; the metrics show the runs as this
/// pass left them.
async fn step(store: &mut FleetStore, metrics: &ControllerMetrics) -> Result<(), StoreError> {
    let mut runs = store.runs().await?;
    let now = unix_now();
    if runs.iter().any(|(run, _)| run.state == RunState::Running) {
        let view = store.view().await?;
        for (run, read_at) in &mut runs {
            if run.state != RunState::Running {
                continue;
            }
            let mut next = run.clone();
            let actions = rollout::advance(&mut next, &view, now);
            if next == *run {
                continue;
            }
            if !store.commit(&next, *read_at, &actions).await? {
                // Changed meanwhile (stop, approve...): read again next pass.
                continue;
            }
            if next.state != run.state {
                info!(run = next.id, state = ?next.state, reason = next.reason.as_deref().unwrap_or(""), "run changed state");
            }
            *run = next;
        }
    }
    metrics.update(&runs, now);
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    run: String,
    revision: String,
    strategy: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    run: String,
    stage: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountLabels {
    run: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    run: String,
}

/// The controller's metrics, rebuilt from the runs on every pass.
#[derive(Default)]
pub struct ControllerMetrics {
    leader: Gauge,
    runs: Family<RunLabels, Gauge>,
    stage_seconds: Family<StageLabels, Seconds>,
    clusters: Family<CountLabels, Gauge>,
    approvals: Family<RunLabel, Gauge>,
    snapshot: Mutex<()>,
}

impl ControllerMetrics {
    fn update(&self, runs: &[(Run, i64)], now: f64) {
        let _guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        self.runs.clear();
        self.stage_seconds.clear();
        self.clusters.clear();
        self.approvals.clear();
        for (run, _) in runs {
            let id = run.id.to_string();
            self.runs
                .get_or_create(&RunLabels {
                    run: id.clone(),
                    revision: run.revision.to_string(),
                    strategy: run.strategy.name.clone(),
                    state: render::lower(run.state),
                })
                .set(1);
            let mut pending_approvals = 0;
            for (stage, spec) in run.stages.iter().zip(&run.strategy.stages) {
                if let Some(started) = stage.started_unix {
                    let ended = stage.ended_unix.unwrap_or(now);
                    self.stage_seconds
                        .get_or_create(&StageLabels {
                            run: id.clone(),
                            stage: stage.name.clone(),
                            state: render::lower(stage.state),
                        })
                        .set(ended - started);
                }
                if run.state == RunState::Running
                    && stage.state == StageState::Gating
                    && matches!(spec.gates.get(stage.gate), Some(Gate::Approval {}))
                {
                    pending_approvals += 1;
                }
            }
            for state in [
                ClusterState::Pending,
                ClusterState::Progressing,
                ClusterState::Succeeded,
                ClusterState::Failed,
                ClusterState::RolledBack,
            ] {
                let count = run
                    .stages
                    .iter()
                    .flat_map(|s| &s.clusters)
                    .filter(|c| c.state == state)
                    .count();
                self.clusters
                    .get_or_create(&CountLabels {
                        run: id.clone(),
                        state: render::lower(state),
                    })
                    .set(count as i64);
            }
            self.approvals
                .get_or_create(&RunLabel { run: id })
                .set(pending_approvals);
        }
    }

    pub fn render(&self) -> String {
        let _guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let mut registry = Registry::with_prefix("fleetnet_rollout");
        registry.register(
            "controller_leader",
            "1 while this controller holds the controller key",
            self.leader.clone(),
        );
        registry.register(
            "runs",
            "1 per run, labelled with its revision, strategy and state",
            self.runs.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "How long each started stage has taken (so far, while it runs)",
            self.stage_seconds.clone(),
        );
        registry.register(
            "clusters",
            "Clusters of each run by state (pending, progressing, succeeded, failed, rolled-back)",
            self.clusters.clone(),
        );
        registry.register(
            "approvals_pending",
            "Stages of each run waiting for `fleetnet rollout approve`",
            self.approvals.clone(),
        );
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fleet::model::Strategy, metrics::documented};

    /// The README's table of controller metrics is what is exported.
    #[test]
    fn the_documented_metrics_are_the_exported_ones() {
        let strategy: Strategy =
            serde_yaml::from_str("name: s\nstages: [ { name: a, selector: {} } ]").unwrap();
        let clusters = [("c1".to_string(), Default::default())].into();
        let mut run = rollout::start(1, 1, &strategy, &clusters, 0.0).unwrap();
        rollout::advance(&mut run, &Default::default(), 1.0);
        // Families are rendered once they have a sample.
        let metrics = ControllerMetrics::default();
        metrics.update(&[(run, 0)], 2.0);
        assert_eq!(
            documented::in_readme("### Rollouts"),
            documented::exported(&metrics.render())
        );
    }
}
