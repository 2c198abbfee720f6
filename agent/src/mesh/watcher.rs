//! Reading the whole mesh, and what this cluster keeps to itself (its
//! local keys, which no other cluster reads): a revision-consistent listing
//! of both, then one watch stream on both from the next revision. When the watch is compacted away, breaks, or etcd is
//! unreachable, it lists again (after a backoff) and the receiver replaces
//! its state with the new listing, so nothing stale survives a gap. Between
//! listings the receiver keeps its last state: the datapath goes on
//! forwarding through an etcd outage. When the client drops an etcd member
//! that stopped answering (the watch may be on it), the watch is opened
//! again through the others from the last revision seen, without a listing.

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;
use tracing::{info, warn};

use std::collections::BTreeMap;

use fleetnet_store::{
    Retry, StoredValue, Update,
    keys::{self, PREFIX},
    members,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// Everything in the keyspace at one revision: replace the state.
    Listing(Vec<StoredValue>),
    /// One change after the last listing.
    Update(Update),
    /// etcd could not be reached; the last state stays in use.
    Disconnected,
}

/// Lists and watches the keyspace, with `cluster`'s local keys, until the
/// receiver is dropped.
pub async fn run(client: Client, cluster: String, events: mpsc::Sender<MeshEvent>) {
    watch_loop(client, cluster, None, events).await
}

/// Like [`run`], but first resumes a watch from `revision` (the revision
/// of a listing the receiver already has).
pub async fn resume(
    client: Client,
    cluster: String,
    revision: i64,
    events: mpsc::Sender<MeshEvent>,
) {
    watch_loop(client, cluster, Some(revision), events).await
}

/// The mesh and `cluster`'s local keys, both as of one revision.
async fn list(
    client: &mut Client,
    cluster: &str,
) -> Result<(Vec<StoredValue>, i64), fleetnet_store::EtcdError> {
    let (mut values, revision) = fleetnet_store::list(client, PREFIX).await?;
    let (local, _) = fleetnet_store::list_at(client, &keys::local_of(cluster), revision).await?;
    values.extend(local);
    Ok((values, revision))
}

async fn watch_loop(
    mut client: Client,
    cluster: String,
    mut resume_from: Option<i64>,
    events: mpsc::Sender<MeshEvent>,
) {
    let prefixes = [PREFIX.to_string(), keys::local_of(&cluster)];
    // Listing and watching fail and recover together: one schedule, one
    // warning when they start failing (then one a minute), one line when
    // a watch runs again.
    let mut retry = Retry::new("mesh watch");
    let mut connected = true;
    loop {
        let revision = match resume_from.take() {
            Some(revision) => revision,
            None => match list(&mut client, &cluster).await {
                Ok((values, revision)) => {
                    if events.send(MeshEvent::Listing(values)).await.is_err() {
                        return;
                    }
                    if !connected {
                        info!("etcd reachable again; the mesh state was listed afresh");
                    }
                    connected = true;
                    // The watch that follows starts from the shortest wait
                    // if it fails (e.g. on an error its connection kept
                    // from before etcd came back).
                    retry.succeeded();
                    revision
                }
                Err(error) => {
                    if connected && events.send(MeshEvent::Disconnected).await.is_err() {
                        return;
                    }
                    connected = false;
                    let wait = retry.failed(&format_args!(
                        "cannot list the mesh from etcd ({error}); keeping the last known state"
                    ));
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        match watch_from(&mut client, &prefixes, revision + 1, &events, &mut retry).await {
            WatchEnd::ReceiverGone => return,
            WatchEnd::Compacted(at) => {
                warn!(
                    revision,
                    compacted = at,
                    "the watch fell behind etcd's compaction; listing again"
                );
            }
            WatchEnd::Broken(error) => {
                let wait = retry.failed(&format_args!("the watch broke ({error}); listing again"));
                tokio::time::sleep(wait).await;
            }
            WatchEnd::MemberDropped(seen) => {
                info!(
                    revision = seen,
                    "an etcd member stopped answering; watching again through the others"
                );
                resume_from = Some(seen);
            }
        }
    }
}

enum WatchEnd {
    ReceiverGone,
    Compacted(i64),
    Broken(String),
    /// A member left the client; everything up to this revision was seen.
    MemberDropped(i64),
}

/// Watches every prefix on one stream (one watch each) from `start`.
async fn watch_from(
    client: &mut Client,
    prefixes: &[String],
    start: i64,
    events: &mpsc::Sender<MeshEvent>,
    retry: &mut Retry,
) -> WatchEnd {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_progress_notify();
    let mut dropped = members::members_dropped();
    let mut stream = match client
        .watch(prefixes[0].as_str(), Some(options.clone()))
        .await
    {
        Ok(stream) => stream,
        Err(error) => return WatchEnd::Broken(error.to_string()),
    };
    for prefix in &prefixes[1..] {
        if let Err(error) = stream.watch(prefix.as_str(), Some(options.clone())).await {
            return WatchEnd::Broken(error.to_string());
        }
    }
    // Per watch, the last revision whose events were all passed on; the
    // watches are not in step with each other, so everything up to the
    // lowest was seen.
    let mut seen_by_watch: BTreeMap<i64, i64> = BTreeMap::new();
    let seen = |by_watch: &BTreeMap<i64, i64>| {
        if by_watch.len() < prefixes.len() {
            start - 1
        } else {
            by_watch.values().copied().min().unwrap_or(start - 1)
        }
    };
    loop {
        let message = tokio::select! {
            message = stream.message() => match message {
                Ok(Some(message)) => message,
                Ok(None) => return WatchEnd::Broken("etcd closed the watch".into()),
                Err(error) => return WatchEnd::Broken(error.to_string()),
            },
            // The stream may be on that member, silent until HTTP/2 pings
            // notice: open another from where this one got to.
            _ = dropped.changed() => return WatchEnd::MemberDropped(seen(&seen_by_watch)),
        };
        if message.compact_revision() > 0 {
            return WatchEnd::Compacted(message.compact_revision());
        }
        if message.canceled() {
            return WatchEnd::Broken(format!(
                "etcd canceled the watch: {}",
                message.cancel_reason()
            ));
        }
        if message.created() {
            retry.succeeded();
            seen_by_watch.insert(message.watch_id(), start - 1);
        }
        for event in message.events() {
            let Some(kv) = event.kv() else {
                continue;
            };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let update = match event.event_type() {
                EventType::Put => Update::Put(StoredValue {
                    key,
                    value: kv.value().to_vec(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                }),
                EventType::Delete => Update::Delete { key },
            };
            if events.send(MeshEvent::Update(update)).await.is_err() {
                return WatchEnd::ReceiverGone;
            }
        }
        // A response carries whole revisions (the watch is not fragmented).
        if let Some(last) = message
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.mod_revision())
            .max()
            && let Some(seen) = seen_by_watch.get_mut(&message.watch_id())
        {
            *seen = (*seen).max(last);
        }
    }
}
