//! Writing a fleet revision's agent into this cluster's agent DaemonSet.
//! Only the node holding the cluster's leader key writes, and only once it
//! knows what the cluster's target asks for; every leader writes the same,
//! so a new leader (the restarted one, say) finds nothing left to do.
//! Through the Kubernetes API it reads the DaemonSet and patches it
//! (`get` and `patch` on that one DaemonSet are all its RBAC grants);
//! with the `manifests` source it rewrites the DaemonSet's manifest in the
//! directory, for whatever plays kubelet there.

mod manifest;
pub mod rewrite;

use std::{path::PathBuf, time::Duration};

use fleetnet_fleet::model::AgentSpec;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{config::DaemonSetSettings, mesh::session::SessionStatus};

/// The DaemonSet is looked at again this often, so an edit by hand that
/// undoes the revision's agent is undone in turn.
const RECHECK: Duration = Duration::from_secs(30);
/// After a failed write.
const RETRY: Duration = Duration::from_secs(5);

/// Where the agent's DaemonSet lives.
#[derive(Clone)]
pub enum Target {
    Kube {
        client: kube::Client,
        daemonset: DaemonSetSettings,
    },
    Manifests {
        directory: PathBuf,
        daemonset: DaemonSetSettings,
    },
}

/// What the cluster's target asks of the DaemonSet, handed to the writer.
pub struct DaemonSetUpdater {
    /// `None` until the cluster's target was read; then the revision's
    /// agent, or none for the DaemonSet's own.
    wanted: watch::Sender<Option<Option<AgentSpec>>>,
    target: Option<Target>,
}

impl DaemonSetUpdater {
    pub fn new(target: Target) -> Self {
        Self {
            wanted: watch::Sender::new(None),
            target: Some(target),
        }
    }

    /// The applied revision's agent (none: the DaemonSet's own).
    pub fn want(&self, agent: Option<&AgentSpec>) {
        let agent = agent.cloned();
        self.wanted.send_if_modified(|wanted| {
            let changed = wanted.as_ref() != Some(&agent);
            *wanted = Some(agent);
            changed
        });
    }

    /// Starts writing, once, while `status` says this node leads.
    pub fn start(&mut self, status: watch::Receiver<SessionStatus>) {
        if let Some(target) = self.target.take() {
            tokio::spawn(write_while_leading(target, self.wanted.subscribe(), status));
        }
    }
}

async fn write_while_leading(
    target: Target,
    mut wanted: watch::Receiver<Option<Option<AgentSpec>>>,
    mut status: watch::Receiver<SessionStatus>,
) {
    let mut last_error = None;
    loop {
        let leading = status.borrow().leader;
        let known = wanted.borrow().clone();
        let mut wait = RECHECK;
        if let (true, Some(agent)) = (leading, known) {
            match target.write(agent.as_ref()).await {
                Ok(Some(image)) => {
                    last_error = None;
                    info!(
                        %image,
                        revision_agent = agent.is_some(),
                        "agent DaemonSet changed as the fleet revision asks; it rolls node by node"
                    );
                }
                Ok(None) => last_error = None,
                // With no revision asking for an agent there is only a
                // change to take back, if any: a DaemonSet (or manifest)
                // this agent cannot read was never changed through it, so
                // that is not worth a warning (clusters without the Role,
                // a manifests directory without the DaemonSet).
                Err(error) if agent.is_none() => {
                    debug!("no fleet revision's agent to take back from the DaemonSet: {error}");
                    wait = RETRY;
                }
                Err(error) => {
                    if last_error.as_ref() != Some(&error) {
                        warn!(
                            "cannot write the fleet revision's agent into the DaemonSet: {error}; retrying"
                        );
                    }
                    last_error = Some(error);
                    wait = RETRY;
                }
            }
        }
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            changed = status.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

impl Target {
    /// Makes the DaemonSet run `agent`; the image written when it changed.
    pub async fn write(&self, agent: Option<&AgentSpec>) -> Result<Option<String>, String> {
        match self {
            Target::Kube { client, daemonset } => patch(client, daemonset, agent).await,
            Target::Manifests {
                directory,
                daemonset,
            } => {
                let (directory, daemonset, agent) =
                    (directory.clone(), daemonset.clone(), agent.cloned());
                tokio::task::spawn_blocking(move || {
                    manifest::write(&directory, &daemonset, agent.as_ref())
                })
                .await
                .map_err(|error| format!("the manifest writer failed: {error}"))?
            }
        }
    }
}

/// Reads the DaemonSet and patches it, conditional on its resourceVersion.
async fn patch(
    client: &kube::Client,
    settings: &DaemonSetSettings,
    agent: Option<&AgentSpec>,
) -> Result<Option<String>, String> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &settings.namespace);
    let name = format!("DaemonSet {}/{}", settings.namespace, settings.name);
    let current = api
        .get(&settings.name)
        .await
        .map_err(|error| format!("cannot read {name}: {error}"))?;
    let resource_version = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let value = serde_json::to_value(&current).map_err(|error| error.to_string())?;
    let Some(change) = rewrite::rewrite(&value, &settings.container, agent)
        .map_err(|error| format!("{name}: {error}"))?
    else {
        return Ok(None);
    };
    api.patch(
        &settings.name,
        &PatchParams::default(),
        &Patch::Merge(change.merge_patch(&resource_version)),
    )
    .await
    .map_err(|error| format!("cannot patch {name}: {error}"))?;
    Ok(Some(change.image))
}
