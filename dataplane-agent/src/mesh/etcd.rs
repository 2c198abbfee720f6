//! Connecting to etcd, and the few key-value operations the mesh needs on
//! top of etcd-client: paginated, revision-consistent prefix listings, and
//! the retry schedule (with its log) every etcd loop of the agent shares.

use std::{
    fmt::Display,
    hash::{BuildHasher, Hasher},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, SortOrder, SortTarget, TlsOptions,
};
use tracing::{debug, info, warn};

use super::state::StoredValue;

/// Keys fetched per request when listing (stays far below gRPC's 4 MiB).
const PAGE: i64 = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
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
        tokio::spawn(steer(client.clone(), probes));
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

/// Counts members taken out of a client by [`steer`] (in this process).
static MEMBERS_DROPPED: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// Changes whenever an etcd member stops getting requests because it does
/// not answer: a stream (a watch) that may be on it should be opened
/// again now, rather than once HTTP/2 pings find the connection dead.
pub fn members_dropped() -> tokio::sync::watch::Receiver<u64> {
    MEMBERS_DROPPED.subscribe()
}

/// How often each member is asked whether it answers, and how long it has.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Failed probes in a row before a member's requests go to the others.
const PROBE_FAILURES: u32 = 2;

/// Keeps the client's requests on the members that answer. etcd-client
/// balances over every endpoint it was given and keeps sending a share of
/// the requests to one that died (each fails) or was cut off (each waits
/// for its timeout), so every operation of the agent would fail now and
/// then for as long as the member is away. Each member is asked for its
/// status every second, with etcd's require-leader (so a member cut off
/// from its peers does not count): one that fails twice in a row leaves
/// the client's endpoints (its connection, and the watches and keepalives
/// on it, end at once), and comes back when it answers again. When no
/// member answers, all stay: whichever returns first is used.
async fn steer(client: Client, mut probes: Vec<(String, Client)>) {
    let mut failures = vec![0u32; probes.len()];
    let mut in_use = vec![true; probes.len()];
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answers = futures_util::future::join_all(probes.iter_mut().map(|(_, probe)| async {
            match tokio::time::timeout(PROBE_EVERY, probe.status()).await {
                Ok(Ok(_)) => Ok(()),
                // A member that answers, if only to refuse (a login it
                // wants), is up.
                Ok(Err(etcd_client::Error::GRpcStatus(status)))
                    if !matches!(
                        status.code() as i32,
                        GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE
                    ) && !status.message().contains("no leader") =>
                {
                    Ok(())
                }
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no answer within {PROBE_EVERY:?}")),
            }
        }))
        .await;
        let mut returned = vec![false; probes.len()];
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Ok(()) => {
                    returned[i] = failures[i] >= PROBE_FAILURES;
                    failures[i] = 0;
                }
                Err(_) => failures[i] = failures[i].saturating_add(1),
            }
        }
        let healthy: Vec<bool> = failures.iter().map(|f| *f < PROBE_FAILURES).collect();
        let wanted: Vec<bool> = if healthy.iter().any(|h| *h) {
            healthy.clone()
        } else {
            vec![true; probes.len()]
        };
        let none_answers = !healthy.iter().any(|h| *h);
        if none_answers && in_use.iter().any(|used| !used) {
            warn!("no etcd member answers; sending requests to every one again");
        }
        for (i, (endpoint, _)) in probes.iter().enumerate() {
            // A member back from failing that stayed in use (none
            // answered): its connection in the client still holds the
            // last connect error, which the next request would get. A
            // fresh one instead.
            if returned[i] && in_use[i] && wanted[i] {
                let _ = client.remove_endpoint(endpoint).await;
                in_use[i] = false;
            }
            if wanted[i] == in_use[i] {
                continue;
            }
            let changed = if wanted[i] {
                client.add_endpoint(endpoint).await
            } else {
                client.remove_endpoint(endpoint).await
            };
            match (changed, wanted[i], &answers[i]) {
                (Err(error), _, _) => {
                    warn!(%endpoint, "cannot change the etcd client's members: {error}");
                    continue;
                }
                (Ok(()), false, Err(error)) => {
                    warn!(
                        %endpoint,
                        "etcd member does not answer ({error}); sending requests to the others"
                    );
                    MEMBERS_DROPPED.send_modify(|count| *count += 1);
                }
                (Ok(()), true, _) if healthy[i] => info!(%endpoint, "etcd member answers again"),
                (Ok(()), _, _) => {}
            }
            in_use[i] = wanted[i];
        }
    }
}

/// gRPC status codes (as numbered by the gRPC specification) of a member
/// that did not answer.
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

/// When an etcd operation that keeps failing is tried again, and what is
/// logged about it. Waits double from [`Retry::MIN`] to [`Retry::MAX`],
/// each spread by up to 25% either way so that the agents of a whole
/// fleet do not all come back to a recovering etcd in the same instant.
/// The first failure is a warning, then one warning a minute at most
/// while the failures last (the others are debug lines), and an info line
/// when the operation works again.
#[derive(Debug)]
pub struct Retry {
    what: &'static str,
    /// Retried at its own pace: only the log is this type's business.
    paced: bool,
    delay: Duration,
    failing_since: Option<Instant>,
    failures: u64,
    last_logged: Option<Instant>,
}

impl Retry {
    pub const MIN: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);
    /// At most one warning this often while an operation keeps failing.
    pub const LOG_EVERY: Duration = Duration::from_secs(60);

    /// `what` names the operation at the start of its log lines ("etcd
    /// session", "mesh watch").
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            paced: false,
            delay: Self::MIN,
            failing_since: None,
            failures: 0,
            last_logged: None,
        }
    }

    /// A [`Retry`] for an operation repeated at its own pace (a periodic
    /// task): the same log, no waits.
    pub fn log_only(what: &'static str) -> Self {
        Self {
            paced: true,
            ..Self::new(what)
        }
    }

    /// Records a failure and logs it when due; returns how long to wait
    /// before the next attempt.
    pub fn failed(&mut self, error: &dyn Display) -> Duration {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        self.failures += 1;
        let wait = jitter(self.delay);
        self.delay = (self.delay * 2).min(Self::MAX);
        let what = self.what;
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY);
        if !due {
            debug!("{what}: {error}; retrying in {wait:.1?}");
        } else if self.failures == 1 && self.paced {
            warn!("{what}: {error}; one warning a minute until it works");
            self.last_logged = Some(now);
        } else if self.failures == 1 {
            warn!(
                "{what}: {error}; retrying in {wait:.1?} (backing off up to {:?}, \
                 then one warning a minute until it works)",
                Self::MAX
            );
            self.last_logged = Some(now);
        } else {
            warn!(
                "{what}: still failing after {:.0?} ({} attempts): {error}",
                now.duration_since(since),
                self.failures
            );
            self.last_logged = Some(now);
        }
        wait
    }

    /// Records a success; after failures, logs how long they lasted and
    /// returns it.
    pub fn succeeded(&mut self) -> Option<Duration> {
        self.delay = Self::MIN;
        let since = self.failing_since.take()?;
        let lasted = since.elapsed();
        info!(
            "{}: working again after {lasted:.1?} ({} failed attempts)",
            self.what, self.failures
        );
        self.failures = 0;
        self.last_logged = None;
        Some(lasted)
    }

    /// The next wait is the shortest again (etcd was seen answering), the
    /// failure goes on for the log.
    pub fn hurry(&mut self) {
        self.delay = Self::MIN;
    }

    /// True while the operation is failing.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

/// `delay` spread uniformly over 75%..125% of itself.
fn jitter(delay: Duration) -> Duration {
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u128(delay.as_nanos());
    let unit = (hasher.finish() % 10_001) as f64 / 10_000.0;
    delay.mul_f64(0.75 + unit / 2.0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_up_to_the_cap_and_reset_on_success() {
        let mut retry = Retry::new("test");
        let waits: Vec<Duration> = (0..10).map(|_| retry.failed(&"down")).collect();
        let nominal = [200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000, 5000];
        for (wait, nominal) in waits.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *wait >= nominal.mul_f64(0.75) && *wait <= nominal.mul_f64(1.25),
                "{wait:?} is not within 25% of {nominal:?}"
            );
        }
        assert!(retry.failing());
        assert!(retry.succeeded().is_some());
        assert!(!retry.failing());
        assert_eq!(retry.succeeded(), None, "nothing to report twice");
        for _ in 0..5 {
            retry.failed(&"down");
        }
        retry.hurry();
        assert!(retry.failing(), "still failing after hurry");
        let wait = retry.failed(&"down");
        assert!(wait <= Retry::MIN.mul_f64(1.25), "{wait:?}: not hurried");
        retry.succeeded();
        let wait = retry.failed(&"down again");
        assert!(wait <= Retry::MIN.mul_f64(1.25), "{wait:?}: not reset");
    }

    #[test]
    fn jitter_spreads_equal_delays() {
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| jitter(Duration::from_secs(5))).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

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
