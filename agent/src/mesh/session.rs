//! A node agent's session with etcd: one lease, kept alive, and the keys
//! this node owns written under it: its node record, its endpoints, its
//! identity references, and (when elected) its cluster's leader key.
//!
//! The session remembers every key it should hold. Whenever its lease is
//! lost (etcd outage longer than the TTL, network partition) it takes a new
//! one and writes them all again, and each time it (re)synchronizes it
//! deletes keys a previous run of this node left behind. When the agent
//! dies its lease expires and every one of these keys disappears from the
//! mesh within the TTL. A clean stop does not revoke the lease: a
//! restarting agent takes its keys over before they expire, so other
//! clusters never see this node's pods vanish and come back.
//!
//! Changes queued while a write is in flight, and a full resync, are
//! written in transactions of up to 128 keys: one round trip and one etcd
//! revision each instead of one per key.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use fleetnet_store::{
    EtcdError, Retry,
    keys::{self, Key},
    records::{EndpointRecord, Record},
};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionStatus {
    /// The lease currently held.
    pub lease: Option<i64>,
    /// Every desired key is written under that lease.
    pub synced: bool,
    /// This node holds its cluster's leader key.
    pub leader: bool,
}

enum Command {
    Put(String, Vec<u8>),
    Delete(String),
    Campaign,
    /// etcd answers again: retry now rather than after the backoff.
    Wake,
}

/// Sends changes to the session task; cheap to clone.
#[derive(Clone)]
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<SessionStatus>,
    bytes_written: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Session {
    /// Starts the session task for `node` of `cluster` with leases of
    /// `ttl`, holding `initial` keys. Start it once the node knows all it
    /// wants to publish: the first sync deletes this node's keys that are
    /// not in `initial`.
    pub fn start(
        client: Client,
        cluster: &str,
        node: &str,
        ttl: Duration,
        initial: BTreeMap<String, Vec<u8>>,
    ) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(SessionStatus::default());
        let bytes_written = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let task = SessionTask {
            client,
            cluster: cluster.into(),
            node: node.into(),
            ttl_seconds: ttl.as_secs().max(2) as i64,
            desired: initial,
            keepalive: None,
            status: SessionStatus::default(),
            status_tx,
            campaign: false,
            bytes_written: bytes_written.clone(),
            errors: errors.clone(),
        };
        tokio::spawn(task.run(receiver));
        Self {
            commands,
            status,
            bytes_written,
            errors,
        }
    }

    /// Holds `key` with `value` under the lease.
    pub fn put(&self, key: String, value: Vec<u8>) {
        let _ = self.commands.send(Command::Put(key, value));
    }

    pub fn delete(&self, key: String) {
        let _ = self.commands.send(Command::Delete(key));
    }

    /// Tells a session waiting to retry that etcd answers again (the mesh
    /// watch listed it), so that it need not wait out its backoff.
    pub fn wake(&self) {
        let _ = self.commands.send(Command::Wake);
    }

    /// Competes for the cluster's leader key from now on.
    pub fn campaign(&self) {
        let _ = self.commands.send(Command::Campaign);
    }

    pub fn status(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Key and value bytes of every put so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Failed etcd operations so far (connecting, writing, keeping the
    /// lease alive, campaigning).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

struct SessionTask {
    client: Client,
    cluster: String,
    node: String,
    ttl_seconds: i64,
    desired: BTreeMap<String, Vec<u8>>,
    keepalive: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    status: SessionStatus,
    status_tx: watch::Sender<SessionStatus>,
    campaign: bool,
    bytes_written: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

/// etcd's default limit of operations in one transaction (--max-txn-ops).
const MAX_TXN_OPS: usize = 128;

impl SessionTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut retry = Retry::new("etcd session");
        // One timer for the whole session: a stream of commands must not
        // keep postponing the keepalive.
        let mut keepalive =
            tokio::time::interval(Duration::from_millis((self.ttl_seconds as u64 * 1000) / 3));
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(error) = self.establish().await {
                self.failed();
                let wait = retry.failed(&error);
                self.lose(&error);
                // Changes meanwhile are remembered, not tried one by one:
                // the next attempt writes them all.
                let until = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        command = commands.recv() => match command {
                            Some(Command::Wake) => {
                                // A first request may still fail on an
                                // error its connection kept from the
                                // outage: retry that one soon, too.
                                retry.hurry();
                                break;
                            }
                            Some(command) => self.remember(command),
                            None => return,
                        },
                    }
                }
                continue;
            }
            retry.succeeded();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        // What queued up meanwhile (a node's pods starting,
                        // a service's backends) goes out in the same
                        // transaction, not as a put each.
                        let mut batch = vec![command];
                        while batch.len() < MAX_TXN_OPS {
                            match commands.try_recv() {
                                Ok(command) => batch.push(command),
                                Err(_) => break,
                            }
                        }
                        self.remember_and_write(batch).await;
                    }
                    None => return,
                },
                _ = keepalive.tick() => {
                    self.refresh().await;
                }
            }
        }
    }

    /// Makes sure a lease is held and every desired key is written.
    async fn establish(&mut self) -> Result<(), etcd_client::Error> {
        match self.status.lease {
            None => {
                let lease = self.client.lease_grant(self.ttl_seconds, None).await?.id();
                self.keepalive = Some(self.client.lease_keep_alive(lease).await?);
                self.status.lease = Some(lease);
                self.status.synced = false;
                self.status.leader = false;
                info!(lease, ttl = self.ttl_seconds, "etcd session established");
            }
            // The keepalive stream broke (its etcd member died or was cut
            // off): keep the lease, which lives on in the cluster, and
            // keep it alive through another member. A lease that expired
            // meanwhile is found by the next keepalive.
            Some(lease) if self.keepalive.is_none() => {
                let timeout = answer_timeout(self.ttl_seconds);
                let opened = tokio::time::timeout(timeout, self.client.lease_keep_alive(lease))
                    .await
                    .map_err(|_| {
                        etcd_client::Error::LeaseKeepAliveError(format!(
                            "no keepalive stream within {timeout:?}"
                        ))
                    })?;
                let opened = match opened {
                    Ok(opened) => opened,
                    Err(error) => {
                        if lease_gone(&error) {
                            warn!(
                                "etcd lease expired; taking a new one and writing this node's keys again"
                            );
                            self.lose_lease();
                        }
                        return Err(error);
                    }
                };
                self.keepalive = Some(opened);
                // Renew at once, rather than at the next tick: the new
                // stream may have reached a member that cannot answer
                // either, and the lease runs out meanwhile.
                match self.keep_alive_once().await {
                    Ok(true) => info!(lease, "etcd lease kept alive through a new stream"),
                    Ok(false) => {
                        warn!(
                            "etcd lease expired; taking a new one and writing this node's keys again"
                        );
                        self.lose_lease();
                        return Err(etcd_client::Error::LeaseKeepAliveError(
                            "the lease expired".into(),
                        ));
                    }
                    Err(error) if lease_gone(&error) => {
                        warn!(
                            "etcd lease expired; taking a new one and writing this node's keys again"
                        );
                        self.lose_lease();
                        return Err(error);
                    }
                    Err(error) => {
                        self.keepalive = None;
                        return Err(error);
                    }
                }
            }
            Some(_) => {}
        }
        if !self.status.synced {
            self.remove_stale_keys().await?;
            let lease = self.status.lease.expect("lease held");
            let all = self.desired.clone().into_iter().map(|(k, v)| (k, Some(v)));
            self.write(all.collect(), lease).await?;
            self.status.synced = true;
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.status_tx.send_if_modified(|status| {
            let changed = *status != self.status;
            *status = self.status.clone();
            changed
        });
    }

    fn lose_sync(&mut self) {
        self.status.synced = false;
        self.publish();
    }

    /// After a failed request: a lease etcd no longer knows is replaced;
    /// anything else is retried under the same lease.
    fn lose(&mut self, error: &etcd_client::Error) {
        if lease_gone(error) {
            self.lose_lease();
        } else {
            self.lose_sync();
        }
    }

    /// The keepalive stream is gone, the lease may not be: the next
    /// [`SessionTask::establish`] opens another stream for it. Keys need
    /// not be written again (a failed write resynchronizes by itself), so
    /// a dying etcd member costs the survivors no burst of rewrites.
    fn lose_keepalive(&mut self) {
        self.keepalive = None;
    }

    fn lose_lease(&mut self) {
        if self.status.leader {
            warn!("lost the leader key with the lease");
        }
        self.status.lease = None;
        self.status.leader = false;
        self.keepalive = None;
        self.lose_sync();
    }

    fn remember(&mut self, command: Command) {
        match command {
            Command::Put(key, value) => {
                self.desired.insert(key, value);
            }
            Command::Delete(key) => {
                self.desired.remove(&key);
            }
            Command::Campaign => self.campaign = true,
            Command::Wake => {}
        }
    }

    async fn remember_and_write(&mut self, batch: Vec<Command>) {
        // The last word on each key: a transaction may name a key once.
        let mut changes: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        let mut campaign = false;
        for command in batch {
            match &command {
                Command::Put(key, value) => {
                    changes.insert(key.clone(), Some(value.clone()));
                }
                Command::Delete(key) => {
                    changes.insert(key.clone(), None);
                }
                Command::Campaign => campaign = true,
                Command::Wake => {}
            }
            self.remember(command);
        }
        if campaign && self.status.synced {
            self.campaign_tick().await;
        }
        if changes.is_empty() || !self.status.synced {
            return;
        }
        let lease = self.status.lease.expect("a synced session holds a lease");
        let count = changes.len();
        if let Err(error) = self.write(changes.into_iter().collect(), lease).await {
            self.failed();
            warn!(
                keys = count,
                "etcd write failed ({error}); the session will resynchronize"
            );
            self.lose(&error);
        }
    }

    /// Puts (`Some`) and deletes (`None`) `changes` under `lease`, up to
    /// [`MAX_TXN_OPS`] keys per transaction.
    async fn write(
        &mut self,
        changes: Vec<(String, Option<Vec<u8>>)>,
        lease: i64,
    ) -> Result<(), etcd_client::Error> {
        for chunk in changes.chunks(MAX_TXN_OPS) {
            let mut bytes = 0;
            let operations: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, value)| match value {
                    Some(value) => {
                        bytes += key.len() + value.len();
                        TxnOp::put(
                            key.as_str(),
                            value.as_slice(),
                            Some(PutOptions::new().with_lease(lease)),
                        )
                    }
                    None => TxnOp::delete(key.as_str(), None),
                })
                .collect();
            self.client.txn(Txn::new().and_then(operations)).await?;
            self.bytes_written
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the lease alive; notices when it is gone.
    async fn refresh(&mut self) {
        if self.keepalive.is_none() {
            return;
        }
        match self.keep_alive_once().await {
            Ok(true) => {
                if self.campaign {
                    self.campaign_tick().await;
                }
            }
            Ok(false) => {
                warn!("etcd lease expired; taking a new one and writing this node's keys again");
                self.lose_lease();
            }
            Err(error) if lease_gone(&error) => {
                self.failed();
                warn!("etcd lease expired; taking a new one and writing this node's keys again");
                self.lose_lease();
            }
            Err(error) => {
                self.failed();
                warn!(
                    "etcd lease keepalive failed ({error}); keeping the lease alive through another connection"
                );
                self.lose_keepalive();
            }
        }
    }

    /// Renews the lease once over the keepalive stream: true while it
    /// lives, false once etcd says it expired. An answer not back within
    /// [`answer_timeout`] is an error: the stream's member is gone.
    async fn keep_alive_once(&mut self) -> Result<bool, etcd_client::Error> {
        let Some((keeper, stream)) = self.keepalive.as_mut() else {
            return Ok(true);
        };
        let answer = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let timeout = answer_timeout(self.ttl_seconds);
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Some(response))) => Ok(response.ttl() > 0),
            Ok(Ok(None)) => Err(etcd_client::Error::LeaseKeepAliveError(
                "etcd closed the keepalive stream".into(),
            )),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(etcd_client::Error::LeaseKeepAliveError(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    /// Deletes keys a previous run of this node left that are not wanted now.
    async fn remove_stale_keys(&mut self) -> Result<(), etcd_client::Error> {
        let mut stale = Vec::new();
        for prefix in [
            keys::endpoints_of(&self.cluster),
            keys::local_endpoints_of(&self.cluster),
            keys::identity_refs_of(&self.cluster),
            keys::exported_identities_of(&self.cluster),
        ] {
            let (values, _) = fleetnet_store::list(&mut self.client, &prefix)
                .await
                .map_err(into_client_error)?;
            for stored in values {
                if !self.desired.contains_key(&stored.key) && self.owns(&stored.key, &stored.value)
                {
                    stale.push(stored.key);
                }
            }
        }
        let own_node = keys::node(&self.cluster, &self.node);
        if !self.desired.contains_key(&own_node) {
            stale.push(own_node);
        }
        for key in stale {
            self.client.delete(key, None).await?;
        }
        Ok(())
    }

    fn owns(&self, key: &str, value: &[u8]) -> bool {
        match keys::parse(key) {
            Some(Key::Endpoint { .. }) => {
                EndpointRecord::decode(value).is_ok_and(|r| r.node == self.node)
            }
            Some(Key::IdentityRef { node, .. } | Key::ExportedIdentity { node, .. }) => {
                node == self.node
            }
            _ => false,
        }
    }

    /// Takes the leader key if free (or already ours from a previous lease).
    async fn try_lead(&mut self) -> Result<(), etcd_client::Error> {
        let lease = self.status.lease.expect("lease held");
        let key = keys::leader(&self.cluster);
        let put = TxnOp::put(
            key.clone(),
            self.node.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let take = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([put.clone()]);
        let mut won = self.client.txn(take).await?.succeeded();
        if !won {
            let reclaim = Txn::new()
                .when([Compare::value(key, CompareOp::Equal, self.node.clone())])
                .and_then([put]);
            won = self.client.txn(reclaim).await?.succeeded();
        }
        if won {
            info!(cluster = %self.cluster, "elected to write the cluster-wide keys");
            self.status.leader = true;
        }
        Ok(())
    }

    /// Leaders check they still hold the key; others try to take it.
    async fn campaign_tick(&mut self) {
        if self.status.leader {
            self.check_leadership().await;
        } else if let Err(error) = self.try_lead().await {
            self.failed();
            warn!("campaigning for the leader key failed: {error}");
        }
        self.publish();
    }

    async fn check_leadership(&mut self) {
        let key = keys::leader(&self.cluster);
        if let Ok(response) = self.client.get(key, None).await {
            let holder = response.kvs().first().map(|kv| kv.value().to_vec());
            if holder.as_deref() != Some(self.node.as_bytes()) {
                warn!("no longer the cluster's leader");
                self.status.leader = false;
            }
        }
    }
}

/// How long a keepalive may take: a quarter of the TTL (so a stream
/// whose member died is replaced well before the lease runs out), between
/// 1 and 5 s.
fn answer_timeout(ttl_seconds: i64) -> Duration {
    (Duration::from_secs(ttl_seconds.max(1) as u64) / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// etcd's ErrLeaseNotFound: "etcdserver: requested lease not found".
/// etcd says the lease is gone (a gRPC status from etcd, or the message
/// a keepalive stream carries through an `etcd grpc-proxy`).
fn lease_gone(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

fn into_client_error(error: EtcdError) -> etcd_client::Error {
    match error {
        EtcdError::Client(error) => error,
        other => etcd_client::Error::InvalidArgs(other.to_string()),
    }
}
