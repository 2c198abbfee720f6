//! Connecting to etcd, and the few key-value operations the mesh needs on
//! top of etcd-client: paginated, revision-consistent prefix listings.

use std::{path::PathBuf, time::Duration};

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, SortOrder, SortTarget, TlsOptions,
};

use super::state::StoredValue;

/// Keys fetched per request when listing (stays far below gRPC's 4 MiB).
const PAGE: i64 = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
}

/// A client for `endpoints`. Connections are made lazily: the agent starts
/// (and forwards from its last state) while etcd is unreachable.
pub async fn connect(endpoints: &[String], tls: Option<&TlsFiles>) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| EtcdError::ReadFile {
                path: path.display().to_string(),
                source,
            })
        };
        let mut config =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca_file)?));
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(config);
    }
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// Every key under `prefix` at one revision, fetched page by page; returns
/// the keys and that revision.
pub async fn list(client: &mut Client, prefix: &str) -> Result<(Vec<StoredValue>, i64), EtcdError> {
    let end = prefix_end(prefix);
    let mut values = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let response = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = response.header().map_or(0, |header| header.revision());
        }
        for kv in response.kvs() {
            values.push(StoredValue {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
            });
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((values, revision)),
        }
    }
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
