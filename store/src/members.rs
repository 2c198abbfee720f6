//! Keeping a client's requests on the etcd members that answer.

use std::time::Duration;

use etcd_client::Client;
use tracing::{info, warn};

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
pub(crate) async fn steer(client: Client, mut probes: Vec<(String, Client)>) {
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
