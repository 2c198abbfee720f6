//! The relay: every node's flows and status, fleet-wide, like Hubble
//! Relay. It finds the agents the way the mesh knows them (the node keys
//! in etcd, [`discover`]), asks each over its observe listener with the
//! fleet CA's mutual TLS ([`fetch`]), one task per cluster ([`poll`]),
//! and serves the merged [`view`] on one HTTP endpoint ([`serve`]) for
//! `fleetnet observe --fleet` and `fleetnet status --fleet`.

pub mod discover;
pub mod fetch;
pub mod map;
pub mod poll;
pub mod serve;
pub mod view;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::Client;
use fleetnet_store::TlsFiles;

use crate::{fetch::AgentClient, poll::Poller, view::View};

/// Where the relay listens when not told: this host only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9966";
/// The agents' observe listener port (`observe.relay-listen` in the base
/// manifests).
pub const DEFAULT_AGENT_PORT: u16 = 9965;

pub struct RelayOptions {
    pub listen: SocketAddr,
    pub agent_port: u16,
    /// The relay's certificate (for `relay.fleetnet`) and the fleet CA.
    pub tls: TlsFiles,
    pub interval: Duration,
    /// Merged flows kept.
    pub flows_kept: usize,
}

/// Runs the relay until the runtime stops; an error is one sentence.
pub async fn run(etcd: Client, options: RelayOptions) -> Result<(), String> {
    let tls = fleetnet_agent::api::tls::client_config(&options.tls)?;
    let view = Arc::new(Mutex::new(View::new(options.flows_kept)));
    let listener = serve::bind(options.listen).await?;
    tracing::info!(listen = %options.listen, "relay serving fleet status and flows");
    let poller = Poller {
        etcd,
        agents: AgentClient::new(tls, options.interval.max(Duration::from_secs(2))),
        agent_port: options.agent_port,
        interval: options.interval,
        view: view.clone(),
    };
    tokio::spawn(poller.run());
    serve::serve(listener, view)
        .await
        .map_err(|error| format!("the relay stopped serving on {}: {error}", options.listen))
}
