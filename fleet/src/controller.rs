//! `fleetnet fleet controller`: moves runs forward. Any number may run;
//! one holds the controller key (under its lease) and acts, the others
//! wait to take over. Everything a run needs lives in its document, so a
//! new controller goes on where the last one stopped.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use fleetnet_store::{Credentials, EtcdError, TlsFiles, fleet_keys as keys, time::unix_now};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    metrics::{self, ControllerMetrics},
    model::{RunState, prometheus::Reading},
    prometheus_query, rollout,
    store::{FleetStore, StoreError},
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
        metrics::serve(address, metrics.clone())
            .await
            .map_err(|source| ControllerError::Metrics { address, source })?;
        info!(%address, "serving controller metrics");
    }
    let client =
        fleetnet_store::connect_as(&config.endpoints, config.tls.as_ref(), config.user.as_ref())
            .await?;
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

/// Asks Prometheus for a due measurement, off the async threads.
async fn measure(due: &rollout::prometheus::Due) -> Reading {
    let (address, query) = (due.address.clone(), due.query.clone());
    tokio::task::spawn_blocking(move || prometheus_query::instant(&address, &query))
        .await
        .unwrap_or_else(|error| Reading::Unreachable(format!("the query task failed: {error}")))
}

/// One pass over every running run; the metrics show the runs as this
/// pass left them.
async fn step(store: &mut FleetStore, metrics: &ControllerMetrics) -> Result<(), StoreError> {
    let mut runs = store.runs().await?;
    let now = unix_now();
    if runs.iter().any(|(run, _)| run.state == RunState::Running) {
        let mut view = store.view().await?;
        for (run, _) in &runs {
            if run.state == RunState::Running
                && let Some(due) = rollout::prometheus::due(run, now)
            {
                let reading = measure(&due).await;
                view.readings
                    .insert((due.run, due.stage, due.gate), reading);
            }
        }
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
