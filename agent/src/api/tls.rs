//! The observe API's TLS: certificates and keys read from PEM files, and
//! the rustls configurations of both ends. Agents serve with their
//! cluster's certificate and ask for a client certificate from the fleet
//! CA; the relay presents its own and checks the agent's name.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use fleetnet_store::TlsFiles;

/// The certificates in a PEM file, in order; none is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let unreadable = |error: &dyn std::fmt::Display| {
        format!("cannot read certificates from {}: {error}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| unreadable(&error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| unreadable(&error))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| format!("cannot read a private key from {}: {error}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|error| format!("{} is not a usable CA: {error}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Both files of a certificate and its key; the config checked they are
/// named.
fn identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) else {
        return Err("a certificate and its key are needed: set cert-file and key-file".into());
    };
    Ok((read_certs(cert)?, read_key(key)?))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The agent's side: its certificate, and only clients with a
/// certificate from `files.ca_file` get through the handshake.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let (certs, key) = identity(files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca_file)?, provider())
        .build()
        .map_err(|error| {
            format!(
                "cannot check clients against {}: {error}",
                files.ca_file.display()
            )
        })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|error| {
            format!("the certificate and key do not make a server identity: {error}")
        })?;
    Ok(Arc::new(config))
}

/// The relay's side: its client certificate, and agents' certificates
/// checked against `files.ca_file`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, String> {
    let (certs, key) = identity(files)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots(&files.ca_file)?)
        .with_client_auth_cert(certs, key)
        .map_err(|error| {
            format!("the certificate and key do not make a client identity: {error}")
        })?;
    Ok(Arc::new(config))
}

/// The peer's certificate (first of its chain) is valid for `name` (a DNS
/// name in its subject alternative names).
pub fn names(peer: &[CertificateDer<'_>], name: &str) -> bool {
    let (Some(cert), Ok(name)) = (peer.first(), ServerName::try_from(name)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
        .is_ok()
}
