//! Connecting to etcd: TLS, keepalives, require-leader, and logging in as
//! an etcd user (whose token is renewed when it expires).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;
use tracing::warn;

use crate::{members, retry::Retry};

/// etcd's TLS: the CA that signed its server certificate and, for etcd's
/// `--client-cert-auth`, a client certificate and key. The agent's config
/// (`etcd.tls`, kebab-case keys) and the CLI's `--etcd-ca/--etcd-cert/
/// --etcd-key` both fill this one type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// An etcd user (etcd's own authentication, `etcdctl user add`): its name
/// and a file holding its password (a mounted Secret; read at each login,
/// so a rotated password is picked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the etcd password file {0} is empty; write the user's password into it")]
    EmptyPassword(String),
    #[error(
        "etcd refused user {user} ({message}); check the user name and the password file, \
         and that the user exists in etcd"
    )]
    Credentials { user: String, message: String },
    #[error("etcd did not answer the login in time")]
    LoginTimedOut,
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
}

/// How long starting up waits for a first login before going on without.
const LOGIN_WAIT: Duration = Duration::from_secs(5);

/// A client for `endpoints`. Connections are made lazily: the agent starts
/// (and forwards from its last state) while etcd is unreachable.
pub async fn connect(endpoints: &[String], tls: Option<&TlsFiles>) -> Result<Client, EtcdError> {
    connect_as(endpoints, tls, None).await
}

/// [`connect`], logged in as `user` when given. Credentials etcd refuses
/// are an error; while etcd cannot be reached the login is retried in the
/// background (requests fail meanwhile, and are retried by their loops).
/// An expired or lost token (etcd restarted) is renewed by the client.
pub async fn connect_as(
    endpoints: &[String],
    tls: Option<&TlsFiles>,
    user: Option<&Credentials>,
) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        // HTTP/2 pings find a member that vanished without closing the
        // connection (partition, power loss) within 9 s. etcd answers
        // pings more frequent than every 5 s with GOAWAY.
        .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        // A member cut off from its peers ends requests and watches with
        // "no leader" instead of serving a view that no longer moves.
        .with_require_leader(true);
    if let Some(tls) = tls {
        let mut config =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca_file)?));
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(config);
    }
    let probe_options = options.clone();
    if user.is_some() {
        options = options.with_auto_token_refresh(true);
    }
    let mut client = Client::connect(endpoints, Some(options)).await?;
    if endpoints.len() > 1 {
        let mut probes = Vec::new();
        for endpoint in endpoints {
            let probe = Client::connect([endpoint], Some(probe_options.clone())).await?;
            probes.push((endpoint.clone(), probe));
        }
        tokio::spawn(members::steer(client.clone(), probes));
    }
    if let Some(user) = user {
        let first = tokio::time::timeout(LOGIN_WAIT, log_in(&mut client, user))
            .await
            .unwrap_or_else(|_| Err(EtcdError::LoginTimedOut));
        match first {
            Ok(()) => {}
            // Wrong credentials, or an unreadable password: a config error.
            Err(
                error @ (EtcdError::Credentials { .. }
                | EtcdError::ReadFile { .. }
                | EtcdError::EmptyPassword(_)),
            ) => return Err(error),
            // etcd unreachable (or without a leader): log in once it answers.
            Err(error) => {
                let mut retry = Retry::new("etcd login");
                let wait = retry.failed(&error);
                tokio::spawn(log_in_later(client.clone(), user.clone(), retry, wait));
            }
        }
    }
    Ok(client)
}

fn read(path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

/// The password in `path`, without a trailing newline.
fn read_password(path: &Path) -> Result<String, EtcdError> {
    let text = String::from_utf8_lossy(&read(path)?).into_owned();
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(EtcdError::EmptyPassword(path.display().to_string()));
    }
    Ok(password)
}

/// Authenticates `client` (and every clone of it) as `user`.
async fn log_in(client: &mut Client, user: &Credentials) -> Result<(), EtcdError> {
    let password = read_password(&user.password_file)?;
    match client
        .update_user(Some((user.username.clone(), password)))
        .await
    {
        Ok(()) => Ok(()),
        Err(etcd_client::Error::GRpcStatus(status))
            if status.message().contains("authentication is not enabled") =>
        {
            warn!(
                user = %user.username,
                "etcd has authentication disabled; going on without logging in (anyone may write any key)"
            );
            Ok(())
        }
        Err(etcd_client::Error::GRpcStatus(status))
            if status.message().contains("authentication failed") =>
        {
            Err(EtcdError::Credentials {
                user: user.username.clone(),
                message: status.message().to_string(),
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// Logs in once etcd answers. Refused credentials are logged (they may be
/// fixed by rotating the Secret) and retried at the slowest pace.
async fn log_in_later(mut client: Client, user: Credentials, mut retry: Retry, first: Duration) {
    tokio::time::sleep(first).await;
    loop {
        match log_in(&mut client, &user).await {
            Ok(()) => {
                retry.succeeded();
                return;
            }
            Err(error) => {
                let wait = retry.failed(&error);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_lose_their_trailing_newline_and_may_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("fleetnet-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_password(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        let error = read_password(&file).unwrap_err().to_string();
        assert!(error.contains("is empty"), "{error}");
        let error = read_password(&dir.join("missing")).unwrap_err().to_string();
        assert!(error.starts_with("cannot read "), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
