//! The tools' side of the agent's HTTP endpoint: `fleetnet status` and
//! `fleetnet observe` ask a running agent, over plain HTTP/1.1, for its
//! status report and recent flows.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use serde::de::DeserializeOwned;

use crate::{config::AgentConfig, observe::flows::FlowPage, status::StatusReport};

/// Where an agent serves when nothing else is said.
pub const DEFAULT_SERVER: &str = "127.0.0.1:9962";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an address:port; pass --server like 127.0.0.1:9962")]
    Address(String),
    #[error(
        "cannot reach the agent at {address} ({source}); is it running, and does its \
         metrics.listen name this address?"
    )]
    Unreachable {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the agent at {address} answered {path} with something unexpected: {detail}")]
    Answer {
        address: SocketAddr,
        path: String,
        detail: String,
    },
    #[error("{0}")]
    Config(String),
}

/// The agent's address: `--server`, else the `metrics.listen` of
/// `--config` (an unspecified address means this host), else the default.
pub fn server_address(
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

pub fn status(address: SocketAddr) -> Result<StatusReport, ClientError> {
    get_json(address, "/status")
}

pub fn flows(address: SocketAddr, since: u64) -> Result<FlowPage, ClientError> {
    get_json(address, &format!("/flows?since={since}"))
}

fn get_json<T: DeserializeOwned>(address: SocketAddr, path: &str) -> Result<T, ClientError> {
    let unreachable = |source| ClientError::Unreachable { address, source };
    let answer = |detail: String| ClientError::Answer {
        address,
        path: path.to_string(),
        detail,
    };
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(3)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(unreachable)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer("no HTTP response".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        return Err(answer(status_line.to_string()));
    }
    serde_json::from_str(body).map_err(|error| answer(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
