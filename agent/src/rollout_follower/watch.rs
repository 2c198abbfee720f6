//! Watching the cluster's target key and fetching the revision it names,
//! so the agent can apply it. A missing or unreadable
//! revision is passed on as an error (the agent reports it and keeps what
//! it has).

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;
use tracing::warn;

use fleetnet_fleet::model::{self, Revision, Target};
use fleetnet_store::{Retry, fleet_keys as keys};

/// What the cluster should run: nothing from the fleet, or a target and
/// its revision (or why it could not be read).
pub type Followed = Option<(Target, Result<Revision, String>)>;

/// Sends what the cluster should run whenever it changes, until the
/// receiver is gone. Reconnects by itself.
pub async fn run(client: Client, cluster: String, updates: mpsc::Sender<Followed>) {
    let key = keys::target(&cluster);
    let mut retry = Retry::new("fleet target watch");
    let mut last: Option<Option<Target>> = None;
    loop {
        match follow_once(client.clone(), &key, &updates, &mut last, &mut retry).await {
            Ok(()) => return,
            Err(error) => tokio::time::sleep(retry.failed(&error)).await,
        }
    }
}

/// Reads the target, then watches it; `Ok` when the receiver is gone.
async fn follow_once(
    mut client: Client,
    key: &str,
    updates: &mpsc::Sender<Followed>,
    last: &mut Option<Option<Target>>,
    retry: &mut Retry,
) -> Result<(), etcd_client::Error> {
    let response = client.get(key, None).await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let current = match response.kvs().first() {
        None => Some(None),
        Some(kv) => readable(kv.value()).map(Some),
    };
    if let Some(current) = current
        && !send(&mut client, current, updates, last).await?
    {
        return Ok(());
    }
    let options = WatchOptions::new().with_start_revision(revision + 1);
    let mut stream = client.watch(key, Some(options)).await?;
    retry.succeeded();
    while let Some(message) = stream.message().await? {
        for event in message.events() {
            let target = match (event.event_type(), event.kv()) {
                (EventType::Put, Some(kv)) => readable(kv.value()).map(Some),
                (EventType::Put, None) => None,
                (EventType::Delete, _) => Some(None),
            };
            if let Some(target) = target
                && !send(&mut client, target, updates, last).await?
            {
                return Ok(());
            }
        }
    }
    Err(etcd_client::Error::WatchError(
        "etcd closed the watch".into(),
    ))
}

/// The target in `value`; an unreadable one is logged and skipped, so the
/// agent keeps what it runs rather than dropping it.
fn readable(value: &[u8]) -> Option<Target> {
    model::decode::<Target>(value)
        .map_err(|error| warn!("ignoring an unreadable fleet target: {error}"))
        .ok()
}

/// Sends `target` (with its revision) unless it is what was sent last;
/// false when the receiver is gone.
async fn send(
    client: &mut Client,
    target: Option<Target>,
    updates: &mpsc::Sender<Followed>,
    last: &mut Option<Option<Target>>,
) -> Result<bool, etcd_client::Error> {
    if last.as_ref() == Some(&target) {
        return Ok(true);
    }
    let followed = match target {
        None => None,
        Some(target) => {
            let response = client.get(keys::revision(target.revision), None).await?;
            let revision = match response.kvs().first() {
                Some(kv) => model::decode::<Revision>(kv.value()).map_err(|error| {
                    format!("revision {} is unreadable: {error}", target.revision)
                }),
                None => Err(format!("revision {} does not exist", target.revision)),
            };
            Some((target, revision))
        }
    };
    *last = Some(target);
    Ok(updates.send(followed).await.is_ok())
}
