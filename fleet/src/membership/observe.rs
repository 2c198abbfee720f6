//! Certificates of the fleet's observe API, from the fleet CA: the relay's
//! client certificate, and the serving certificate of a cluster's agents
//! for clusters configured by hand (`fleetnet cluster join` issues its
//! members' own).

use std::{fs, io, path::Path};

use etcd_client::Client;
use fleetnet_store::{
    names::check_dns_label,
    observe_names::{RELAY_NAME, agent_name},
};

use super::{ca::Issued, init_ca, overlay::write_credentials};
use crate::store::StoreError;

/// Who the certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveParty {
    Relay,
    /// Every agent of this cluster.
    Agents(String),
}

/// The fleet CA's certificate and a new certificate for `party` (the CA is
/// made when the fleet has none).
pub async fn issue(
    client: &mut Client,
    party: &ObserveParty,
) -> Result<(String, Issued), StoreError> {
    let name = match party {
        ObserveParty::Relay => RELAY_NAME.to_string(),
        ObserveParty::Agents(cluster) => {
            check_dns_label("cluster name", cluster).map_err(StoreError::Invalid)?;
            agent_name(cluster)
        }
    };
    let (ca, _) = init_ca(client).await?;
    // Named by their DNS name only: etcd with `--client-cert-auth` trusts
    // the same CA and would log a certificate in as the user its common
    // name names (a cluster called `root`).
    let issued = ca.issue("", &[name]).map_err(StoreError::Invalid)?;
    Ok((ca.cert, issued))
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (only its owner reads) into
/// `dir`, the files `observe.tls` and `fleetnet relay --tls-*` name.
pub fn write(dir: &Path, ca: &str, issued: &Issued) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    write_credentials(dir, ca, issued)
}
