//! Asking one agent over its observe listener: a TLS connection that
//! presents the relay's certificate and accepts only a certificate for
//! the agent's cluster ([`agent_name`]), one HTTP/1.1 GET, its JSON.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::{TlsConnector, rustls::ClientConfig};

use fleetnet_store::observe_names::agent_name;

/// The largest answer read: a full flow store (4,096 flows) is ~2 MB.
const MAX_BODY: usize = 64 << 20;

/// How the relay reaches agents.
#[derive(Clone)]
pub struct AgentClient {
    connector: TlsConnector,
    /// Connecting and the whole exchange each, so one stuck node holds its
    /// cluster's round back by no more.
    pub timeout: Duration,
}

impl AgentClient {
    pub fn new(tls: Arc<ClientConfig>, timeout: Duration) -> Self {
        Self {
            connector: TlsConnector::from(tls),
            timeout,
        }
    }

    /// `GET path` from the agent of `cluster` at `address`, as JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        cluster: &str,
        address: SocketAddr,
        path: &str,
    ) -> Result<T, String> {
        timeout(self.timeout, self.exchange(cluster, address, path))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        cluster: &str,
        address: SocketAddr,
        path: &str,
    ) -> Result<T, String> {
        let name = ServerName::try_from(agent_name(cluster))
            .map_err(|error| format!("cluster {cluster:?} makes no certificate name: {error}"))?;
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|error| error.to_string())?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|error| format!("TLS: {error}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|error| error.to_string())?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, address.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|error| format!("reading the answer: {error}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|error| format!("answered {path} with unreadable JSON: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleetnet_agent::{
        api::{observe_listener, server::Shared, status::StatusReport, tls::client_config},
        metrics::Metrics,
    };
    use fleetnet_fleet::membership::ca::{FleetCa, Issued};
    use fleetnet_store::{
        TlsFiles,
        observe_names::{RELAY_NAME, agent_name},
    };

    use super::*;

    fn files(dir: &std::path::Path, name: &str, ca: &FleetCa, issued: &Issued) -> TlsFiles {
        let path = |file: &str| dir.join(format!("{name}-{file}"));
        std::fs::write(path("ca.crt"), &ca.cert).unwrap();
        std::fs::write(path("tls.crt"), &issued.cert).unwrap();
        std::fs::write(path("tls.key"), &issued.key).unwrap();
        TlsFiles {
            ca_file: path("ca.crt"),
            cert_file: Some(path("tls.crt")),
            key_file: Some(path("tls.key")),
        }
    }

    /// The relay reads an agent of the cluster it expects, and refuses
    /// one whose certificate is another cluster's or another CA's.
    #[tokio::test]
    async fn the_relay_checks_which_cluster_answers() {
        let dir = std::env::temp_dir().join(format!("fleetnet-relay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = FleetCa::generate().unwrap();
        let agent = files(&dir, "c2", &ca, &ca.issue("", &[agent_name("c2")]).unwrap());
        let relay = files(
            &dir,
            "relay",
            &ca,
            &ca.issue("", &[RELAY_NAME.into()]).unwrap(),
        );
        let shared = Arc::new(Shared::new(Arc::new(Metrics::default()), 16));
        shared.status.lock().unwrap().node = "n1".into();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        observe_listener::serve(address, &agent, shared)
            .await
            .unwrap();
        let client = AgentClient::new(client_config(&relay).unwrap(), Duration::from_secs(5));
        let report: StatusReport = client.get("c2", address, "/status").await.unwrap();
        assert_eq!(report.node, "n1");
        let error = client
            .get::<StatusReport>("c1", address, "/status")
            .await
            .unwrap_err();
        assert!(error.starts_with("TLS: "), "{error}");
        let stranger = FleetCa::generate().unwrap();
        let other_ca = files(
            &dir,
            "other",
            &stranger,
            &stranger.issue("", &[RELAY_NAME.into()]).unwrap(),
        );
        let client = AgentClient::new(client_config(&other_ca).unwrap(), Duration::from_secs(5));
        let error = client
            .get::<StatusReport>("c2", address, "/status")
            .await
            .unwrap_err();
        assert!(error.starts_with("TLS: "), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
