//! The tools' side of the agent's and the relay's HTTP endpoints:
//! `fleetnet status` and `fleetnet observe` ask a running agent for its
//! status report and recent flows, or with `--fleet` the relay for every
//! node's.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::Args;

use fleetnet_agent::{api::status::StatusReport, config::AgentConfig, observe::flows::FlowPage};
use fleetnet_relay::view::FleetStatus;
use serde::de::DeserializeOwned;

/// Where an agent serves when nothing else is said.
pub(crate) const DEFAULT_SERVER: &str = "127.0.0.1:9962";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("{0:?} is not an address:port; pass --server like 127.0.0.1:9962")]
    Address(String),
    #[error("cannot reach {} at {address} ({reason}); {}", .server.name(), .server.hint())]
    Unreachable {
        server: Server,
        address: SocketAddr,
        reason: String,
    },
    #[error("{} at {address} answered {path} with something unexpected: {detail}", .server.name())]
    Answer {
        server: Server,
        address: SocketAddr,
        path: String,
        detail: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Whom a tool asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// One node's agent, on its metrics.listen.
    Agent,
    /// The fleet's relay (`fleetnet relay`).
    Relay,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Agent => "the agent",
            Server::Relay => "the relay",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Server::Agent => "is it running, and does its metrics.listen name this address?",
            Server::Relay => "is fleetnet relay running, and does its --listen name this address?",
        }
    }
}

/// Which agent to ask.
#[derive(Args)]
pub(crate) struct AgentAddress {
    /// The agent's metrics.listen address [default: 127.0.0.1:9962].
    #[arg(long, value_name = "ADDRESS", conflicts_with = "config")]
    server: Option<String>,
    /// Read the address from this agent configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Asking the relay instead of one agent.
#[derive(Args)]
pub(crate) struct FleetTarget {
    /// Every node of every cluster, through the relay (fleetnet relay).
    #[arg(long, conflicts_with_all = ["server", "config"])]
    pub(crate) fleet: bool,
    /// The relay's --listen address, with --fleet.
    #[arg(long, value_name = "ADDRESS", default_value = fleetnet_relay::DEFAULT_LISTEN, requires = "fleet")]
    pub(crate) relay: SocketAddr,
}

/// Exit code when the agent cannot be reached or answers nonsense.
pub(crate) const UNREACHABLE: u8 = 2;

impl AgentAddress {
    pub(crate) fn resolve(&self) -> Result<std::net::SocketAddr, ExitCode> {
        server_address(self.server.as_deref(), self.config.as_deref()).map_err(|error| {
            eprintln!("fleetnet: {error}");
            ExitCode::from(UNREACHABLE)
        })
    }
}

/// The agent's address: `--server`, else the `metrics.listen` of
/// `--config` (an unspecified address means this host), else the default.
pub(crate) fn server_address(
    server: Option<&str>,
    config: Option<&Path>,
) -> Result<SocketAddr, ClientError> {
    let text = match (server, config) {
        (Some(server), _) => server.to_string(),
        (None, Some(path)) => {
            let config =
                AgentConfig::load(path).map_err(|error| ClientError::Config(error.to_string()))?;
            if config.metrics.listen.is_empty() {
                return Err(ClientError::Config(format!(
                    "{}: metrics.listen is empty, so the agent serves no status; set it",
                    path.display()
                )));
            }
            config.metrics.listen
        }
        (None, None) => DEFAULT_SERVER.to_string(),
    };
    let mut address: SocketAddr = text
        .parse()
        .map_err(|_| ClientError::Address(text.clone()))?;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(address)
}

pub(crate) fn status(address: SocketAddr) -> Result<StatusReport, ClientError> {
    get_json(Server::Agent, address, "/status")
}

/// Every node's status, from the relay.
pub(crate) fn fleet_status(address: SocketAddr) -> Result<FleetStatus, ClientError> {
    get_json(Server::Relay, address, "/status")
}

/// Flows from `since` on, from one agent or from the relay.
pub(crate) fn flows(
    server: Server,
    address: SocketAddr,
    since: u64,
) -> Result<FlowPage, ClientError> {
    get_json(server, address, &format!("/flows?since={since}"))
}

fn get_json<T: DeserializeOwned>(
    server: Server,
    address: SocketAddr,
    path: &str,
) -> Result<T, ClientError> {
    let answer = |detail: String| ClientError::Answer {
        server,
        address,
        path: path.to_string(),
        detail,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(3)))
        .timeout_global(Some(Duration::from_secs(10)))
        // A status other than 200 is the agent's answer, said as such.
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{address}{path}"))
        .call()
        .map_err(|error| ClientError::Unreachable {
            server,
            address,
            // The operating system's words ("Connection refused"), not
            // ureq's wrapping of them.
            reason: match error {
                ureq::Error::Io(io) => io.to_string(),
                other => other.to_string(),
            },
        })?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        // The flow store's 4,096 flows are ~2 MB of JSON; ureq stops at 10 MB.
        .limit(64 << 20)
        .read_to_string()
        .map_err(|error| answer(error.to_string()));
    if status != 200 {
        // The server's own sentence, when it gave one (a 403 says where
        // to ask instead).
        let said = body.unwrap_or_default();
        return Err(match said.trim() {
            "" => answer(status.to_string()),
            said => answer(format!("{status}: {said}")),
        });
    }
    serde_json::from_str(&body?).map_err(|error| answer(error.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleetnet_agent::{api::server, metrics::Metrics, observe::flows::FlowRecord};

    use super::*;

    #[tokio::test]
    async fn status_and_a_full_flow_store_reach_the_client() {
        let shared = Arc::new(server::Shared::new(Arc::new(Metrics::default()), 4096));
        for i in 0..5000 {
            shared.flows.lock().unwrap().push(FlowRecord {
                reason: format!("reason {i}"),
                ..FlowRecord::default()
            });
        }
        shared.status.lock().unwrap().node = "n1".into();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        server::serve(address, shared).await.unwrap();
        let (status, page) = tokio::task::spawn_blocking(move || {
            (status(address), flows(Server::Agent, address, 0))
        })
        .await
        .unwrap();
        assert_eq!(status.unwrap().node, "n1");
        let page = page.unwrap();
        assert_eq!(page.flows.len(), 4096);
        assert_eq!(page.next, 5001);
        assert_eq!(page.flows[0].seq, 905);
    }

    #[test]
    fn addresses_come_from_the_flag_or_the_default() {
        assert_eq!(
            server_address(Some("0.0.0.0:9000"), None).unwrap(),
            "127.0.0.1:9000".parse().unwrap(),
            "an unspecified address means this host"
        );
        assert_eq!(
            server_address(None, None).unwrap(),
            DEFAULT_SERVER.parse().unwrap()
        );
        assert_eq!(
            server_address(Some("nowhere"), None)
                .unwrap_err()
                .to_string(),
            "\"nowhere\" is not an address:port; pass --server like 127.0.0.1:9962"
        );
    }

    #[test]
    fn an_agent_that_is_not_there_is_one_sentence() {
        // A port nothing listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let error = status(address).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("cannot reach the agent at 127.0.0.1:{port} (")),
            "{error}"
        );
    }
}
