//! The polling rounds: find the agents in etcd, ask every cluster's
//! agents at once (one task per cluster, a bounded number of nodes at a
//! time within it), and merge what they said into the [`View`].

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::Client;
use futures_util::{StreamExt, stream};
use tokio::task::JoinSet;
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

pub struct Poller {
    pub etcd: Client,
    pub agents: AgentClient,
    /// The port of every agent's observe listener.
    pub agent_port: u16,
    pub interval: Duration,
    pub view: Arc<Mutex<View>>,
}

impl Poller {
    /// Polls until the runtime stops. etcd not answering keeps the last
    /// list of agents.
    pub async fn run(mut self) {
        let mut known: BTreeMap<String, Vec<AgentRef>> = BTreeMap::new();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match discover::agents(&mut self.etcd).await {
                Ok(agents) => known = agents,
                Err(error) => warn!(%error, "cannot list the fleet's nodes; asking the ones known"),
            }
            let round = self.round(&known).await;
            lock(&self.view).merge(round, fleetnet_store::time::unix_now());
            match FleetStore::new(self.etcd.clone()).runs().await {
                Ok(runs) => {
                    lock(&self.view).set_runs(runs.into_iter().map(|(run, _)| run).collect())
                }
                Err(error) => warn!(%error, "cannot read the fleet's rollouts"),
            }
        }
    }

    /// One round over `clusters`.
    pub async fn round(&self, clusters: &BTreeMap<String, Vec<AgentRef>>) -> Vec<Polled> {
        let mut tasks = JoinSet::new();
        for agents in clusters.values() {
            let asks: Vec<(AgentRef, u64)> = {
                let view = lock(&self.view);
                agents
                    .iter()
                    .map(|agent| (agent.clone(), view.cursor(&agent.cluster, &agent.node)))
                    .collect()
            };
            let client = self.agents.clone();
            let port = self.agent_port;
            tasks.spawn(async move {
                stream::iter(asks)
                    .map(|(agent, since)| poll_one(&client, agent, port, since))
                    .buffer_unordered(PER_CLUSTER)
                    .collect::<Vec<_>>()
                    .await
            });
        }
        let mut round = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(polled) = done {
                round.extend(polled);
            }
        }
        round
    }
}

async fn poll_one(client: &AgentClient, agent: AgentRef, port: u16, since: u64) -> Polled {
    let address = SocketAddr::from((agent.ip, port));
    let status = client.get::<StatusReport>(&agent.cluster, address, "/status");
    let path = format!("/flows?since={since}");
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
