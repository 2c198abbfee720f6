//! Reading the whole mesh: a revision-consistent listing, then a watch from
//! the next revision. When the watch is compacted away, breaks, or etcd is
//! unreachable, it lists again (after a backoff) and the receiver replaces
//! its state with the new listing, so nothing stale survives a gap. Between
//! listings the receiver keeps its last state: the datapath goes on
//! forwarding through an etcd outage.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    etcd,
    keys::PREFIX,
    state::{StoredValue, Update},
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

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Lists and watches the keyspace until the receiver is dropped.
pub async fn run(client: Client, events: mpsc::Sender<MeshEvent>) {
    watch_loop(client, None, events).await
}

/// Like [`run`], but first resumes a watch from `revision` (the revision
/// of a listing the receiver already has).
pub async fn resume(client: Client, revision: i64, events: mpsc::Sender<MeshEvent>) {
    watch_loop(client, Some(revision), events).await
}

async fn watch_loop(
    mut client: Client,
    mut resume_from: Option<i64>,
    events: mpsc::Sender<MeshEvent>,
) {
    let mut retry = RETRY_MIN;
    let mut connected = true;
    loop {
        let revision = match resume_from.take() {
            Some(revision) => revision,
            None => match etcd::list(&mut client, PREFIX).await {
                Ok((values, revision)) => {
                    if events.send(MeshEvent::Listing(values)).await.is_err() {
                        return;
                    }
                    if !connected {
                        info!("etcd reachable again; the mesh state was listed afresh");
                    }
                    connected = true;
                    retry = RETRY_MIN;
                    revision
                }
                Err(error) => {
                    if connected {
                        warn!(
                            "cannot list the mesh from etcd ({error}); keeping the last known state"
                        );
                        if events.send(MeshEvent::Disconnected).await.is_err() {
                            return;
                        }
                    }
                    connected = false;
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            },
        };
        match watch_from(&mut client, revision + 1, &events).await {
            WatchEnd::ReceiverGone => return,
            WatchEnd::Compacted(at) => {
                warn!(
                    revision,
                    compacted = at,
                    "the watch fell behind etcd's compaction; listing again"
                );
            }
            WatchEnd::Broken(error) => {
                warn!("the mesh watch broke ({error}); listing again");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

enum WatchEnd {
    ReceiverGone,
    Compacted(i64),
    Broken(String),
}

async fn watch_from(client: &mut Client, start: i64, events: &mpsc::Sender<MeshEvent>) -> WatchEnd {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_progress_notify();
    let mut stream = match client.watch(PREFIX, Some(options)).await {
        Ok(stream) => stream,
        Err(error) => return WatchEnd::Broken(error.to_string()),
    };
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return WatchEnd::Broken("etcd closed the watch".into()),
            Err(error) => return WatchEnd::Broken(error.to_string()),
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
    }
}
