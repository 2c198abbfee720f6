//! The polling: the agents found in etcd, and one task per cluster that
//! asks its agents (a bounded number at a time) every interval and merges
//! what they said into the [`View`] by itself, so that a cluster slow to
//! answer holds back no other.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::Client;
use futures_util::{StreamExt, stream};
use tokio::{
    sync::watch,
    time::{MissedTickBehavior, interval},
};
use tracing::warn;

use fleetnet_agent::{api::status::StatusReport, observe::flows::FlowPage};
use fleetnet_fleet::store::FleetStore;

use crate::{
    discover::{self, AgentRef},
    fetch::AgentClient,
    view::{Polled, View},
};

/// How many of one cluster's agents are asked at the same time.
const PER_CLUSTER: usize = 16;
/// The agents are listed every this many intervals (10 s by default): a
/// list reads every node key of the fleet (32,768 at 4,096 clusters of 8
/// nodes), and nodes come and go far less often than flows do.
const DISCOVER_EVERY: u64 = 10;

pub struct Poller {
    pub etcd: Client,
    pub agents: AgentClient,
    /// The port of every agent's observe listener.
    pub agent_port: u16,
    pub interval: Duration,
    pub view: Arc<Mutex<View>>,
}

impl Poller {
    /// Lists the rollouts every interval and the agents every
    /// [`DISCOVER_EVERY`] intervals, and keeps one polling task per
    /// cluster, until the runtime stops. etcd not answering keeps the last
    /// list of agents.
    pub async fn run(mut self) {
        let mut clusters: BTreeMap<String, watch::Sender<Vec<AgentRef>>> = BTreeMap::new();
        let mut ticker = interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for tick in 0u64.. {
            ticker.tick().await;
            if tick % DISCOVER_EVERY != 0 {
                self.read_runs().await;
                continue;
            }
            match discover::agents(&mut self.etcd).await {
                Ok(found) => {
                    clusters.retain(|name, _| {
                        let stays = found.contains_key(name);
                        if !stays {
                            lock(&self.view).remove_cluster(name);
                        }
                        stays
                    });
                    for (name, agents) in found {
                        match clusters.get(&name) {
                            Some(sender) => {
                                sender.send_replace(agents);
                            }
                            None => {
                                let (sender, receiver) = watch::channel(agents);
                                tokio::spawn(self.cluster_task(name.clone(), receiver));
                                clusters.insert(name, sender);
                            }
                        }
                    }
                }
                Err(error) => warn!(%error, "cannot list the fleet's nodes; asking the ones known"),
            }
            self.read_runs().await;
        }
    }

    /// The fleet's rollouts into the view: a few keys.
    async fn read_runs(&self) {
        match FleetStore::new(self.etcd.clone()).runs().await {
            Ok(runs) => lock(&self.view).set_runs(runs.into_iter().map(|(run, _)| run).collect()),
            Err(error) => warn!(%error, "cannot read the fleet's rollouts"),
        }
    }

    /// Polls `cluster`'s agents every interval until the cluster leaves
    /// the mesh (its sender is dropped).
    fn cluster_task(
        &self,
        cluster: String,
        agents: watch::Receiver<Vec<AgentRef>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (client, port, view, every) = (
            self.agents.clone(),
            self.agent_port,
            self.view.clone(),
            self.interval,
        );
        async move {
            let mut ticker = interval(every);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if agents.has_changed().is_err() {
                    return;
                }
                let asks: Vec<(AgentRef, u64)> = {
                    let view = lock(&view);
                    agents
                        .borrow()
                        .iter()
                        .map(|agent| (agent.clone(), view.cursor(&agent.cluster, &agent.node)))
                        .collect()
                };
                let round: Vec<Polled> = stream::iter(asks)
                    .map(|(agent, since)| poll_one(&client, agent, port, since))
                    .buffer_unordered(PER_CLUSTER)
                    .collect()
                    .await;
                if agents.has_changed().is_err() {
                    return;
                }
                lock(&view).merge_cluster(&cluster, round, fleetnet_store::time::unix_now());
            }
        }
    }
}

async fn poll_one(client: &AgentClient, agent: AgentRef, port: u16, since: u64) -> Polled {
    let address = SocketAddr::from((agent.ip, port));
    let path = format!("/flows?since={since}");
    let status = client.get::<StatusReport>(&agent.cluster, address, "/status");
    let flows = client.get::<FlowPage>(&agent.cluster, address, &path);
    let (status, flows) = tokio::join!(status, flows);
    Polled {
        cluster: agent.cluster,
        node: agent.node,
        address,
        status,
        flows,
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
