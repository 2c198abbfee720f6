//! How a command reaches etcd: `--etcd`, TLS and an etcd user, shared by
//! every fleet and rollout command.

use std::path::PathBuf;

use clap::Args;
use etcd_client::Client;
use fleetnet_fleet::store::{FleetStore, StoreError};
use fleetnet_store::{Credentials, TlsFiles};

/// Where etcd is.
#[derive(Args, Clone)]
pub(crate) struct EtcdArgs {
    /// etcd endpoint URL (repeat or separate with commas).
    #[arg(
        long = "etcd",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// CA certificate of etcd's TLS endpoint.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user to log in as (etcd with authentication enabled).
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the password of --etcd-user.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    pub(crate) fn credentials(&self) -> Option<Credentials> {
        Some(Credentials {
            username: self.etcd_user.clone()?,
            password_file: self.etcd_password_file.clone()?,
        })
    }

    pub(crate) fn tls(&self) -> Option<TlsFiles> {
        self.etcd_ca.as_ref().map(|ca| TlsFiles {
            ca_file: ca.clone(),
            cert_file: self.etcd_cert.clone(),
            key_file: self.etcd_key.clone(),
        })
    }

    /// A fleet store over a client of these settings.
    pub(crate) async fn store(&self) -> Result<FleetStore, StoreError> {
        Ok(FleetStore::new(self.client().await?))
    }

    /// A client of these settings.
    pub(crate) async fn client(&self) -> Result<Client, StoreError> {
        Ok(fleetnet_store::connect_as(
            &self.endpoints,
            self.tls().as_ref(),
            self.credentials().as_ref(),
        )
        .await?)
    }
}
