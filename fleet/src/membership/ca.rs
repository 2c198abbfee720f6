//! The fleet's certificate authority: made once, kept in etcd under the
//! admin prefix (only etcd's root reads it), and signing each joined
//! cluster's etcd client certificate, whose common name is the cluster's
//! etcd user, so an etcd running with `--client-cert-auth` maps the
//! certificate to that user and its role.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

const CA_NAME: &str = "fleetnet fleet CA";
/// The CA's lifetime. Its certificate is in every cluster's Secrets and in
/// etcd's trusted CAs, so it outlives many member certificates.
const CA_DAYS: i64 = 3650;
/// A member certificate's lifetime: a cluster that stays joined longer
/// gets a new one by joining again with the same parameters.
const MEMBER_DAYS: i64 = 365;

/// The CA as stored: both PEM encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetCa {
    pub v: u32,
    pub cert: String,
    pub key: String,
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl FleetCa {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, String> {
        let key = KeyPair::generate().map_err(|error| format!("cannot make a key: {error}"))?;
        let mut params = ca_params();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(|error| format!("cannot sign the fleet CA: {error}"))?;
        Ok(Self {
            v: crate::model::VERSION,
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A certificate for `common_name` (none when empty), for clients, and
    /// for servers too when `dns_names` are given.
    pub fn issue(&self, common_name: &str, dns_names: &[String]) -> Result<Issued, String> {
        let ca_key = KeyPair::from_pem(&self.key)
            .map_err(|error| format!("the fleet CA's key in etcd is unusable: {error}"))?;
        // The issuer is the CA's name and key identifier, both derived
        // from what `generate` used, so its certificate need not be parsed.
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate().map_err(|error| format!("cannot make a key: {error}"))?;
        let mut params = CertificateParams::new(dns_names.to_vec())
            .map_err(|error| format!("{dns_names:?} are not DNS names: {error}"))?;
        params.distinguished_name = DistinguishedName::new();
        if !common_name.is_empty() {
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if !dns_names.is_empty() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(MEMBER_DAYS);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|error| format!("cannot sign a certificate for {common_name}: {error}"))?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// What names the CA and what it may sign, the same at generation and
/// at each issue.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fleetnet");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// openssl verifies an issued certificate against the CA, and reads
    /// the common name etcd maps to a user.
    #[test]
    fn issued_certificates_verify_against_the_ca_and_name_the_user() {
        let ca = FleetCa::generate().unwrap();
        let issued = ca
            .issue("fleetnet-c3-g1", &["proxy.example".to_string()])
            .unwrap();
        let dir = std::env::temp_dir().join(format!("fleetnet-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert).unwrap();
        std::fs::write(dir.join("tls.crt"), &issued.cert).unwrap();
        let verify = Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(dir.join("ca.crt"))
            .arg(dir.join("tls.crt"))
            .output()
            .expect("openssl runs");
        let subject = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(dir.join("tls.crt"))
            .output()
            .expect("openssl runs");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            verify.status.success(),
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(
            String::from_utf8_lossy(&subject.stdout).contains("CN = fleetnet-c3-g1"),
            "{}",
            String::from_utf8_lossy(&subject.stdout)
        );
        // Another CA's certificate does not verify.
        let other = FleetCa::generate().unwrap();
        assert_ne!(other.cert, ca.cert);
    }
}
