//! The observe listener (`observe.relay-listen`): `/status` and `/flows`
//! for the relay, over mutual TLS. The handshake admits certificates from
//! the fleet CA; of those, only the relay's (named
//! [`RELAY_NAME`]) is answered, so a cluster's own etcd certificate, from
//! the same CA, reads no other cluster's flows.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, http::StatusCode};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, time::timeout};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use fleetnet_store::{TlsFiles, observe_names::RELAY_NAME};

use super::{server::Shared, tls};

/// How long a client has for its TLS handshake, and for each request's
/// headers.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Connections served at once: the relay needs two per poll.
const CONNECTIONS: usize = 64;

/// Why the listener did not start, in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("observe.tls: {0}")]
    Tls(String),
    #[error("cannot listen on observe.relay-listen {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves the relay on `address` until the runtime stops.
pub async fn serve(
    address: SocketAddr,
    files: &TlsFiles,
    shared: Arc<Shared>,
) -> Result<(), ListenError> {
    let acceptor = TlsAcceptor::from(tls::server_config(files).map_err(ListenError::Tls)?);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ListenError::Bind { address, source })?;
    let relay = super::server::observe_routes().with_state(shared);
    let others = Router::new().fallback(|| async {
        (
            StatusCode::FORBIDDEN,
            format!(
                "this listener answers the fleet's relay only (a certificate for {RELAY_NAME}); \
                 run fleetnet observe --fleet or fleetnet status --fleet through it\n"
            ),
        )
    });
    info!(%address, "serving status and flows to the relay over mutual TLS");
    // The port is open to the node's network: a client that connects and
    // says nothing holds a connection for HANDSHAKE at most, and no more
    // than CONNECTIONS are held at once.
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    debug!(%error, "the observe listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let (relay, others) = (relay.clone(), others.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let stream = match timeout(HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        debug!(%peer, %error, "refused a TLS handshake on the observe listener");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "no TLS handshake in time on the observe listener");
                        return;
                    }
                };
                let is_relay = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|certs| tls::names(certs, RELAY_NAME));
                let router = if is_relay { relay } else { others };
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HANDSHAKE)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
                    .await;
                if let Err(error) = served {
                    debug!(%peer, %error, "an observe connection ended in error");
                }
            });
        }
    });
    Ok(())
}
