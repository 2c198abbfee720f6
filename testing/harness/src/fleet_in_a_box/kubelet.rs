//! The fleet in a box plays kubelet for each cluster's agent DaemonSet:
//! its manifest is `daemonset.yaml` in the cluster's manifests directory,
//! which the cluster's leader agent rewrites when a fleet revision carries
//! the agent. Like the DaemonSet controller with `maxUnavailable: 1`, the
//! kubelet replaces one node's agent at a time, the next once the last is
//! ready: SIGTERM to the old one (`--keep-pins`, so the node keeps
//! forwarding), then the binary the new image names, with the pod
//! template's environment. A node whose new agent is not ready yet is
//! replaced at once when the template changes again (a rollback).

use std::{
    collections::BTreeMap,
    fs, io,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::*;

/// The DaemonSet's manifest in each cluster's manifests directory.
pub const DAEMONSET_FILE: &str = "daemonset.yaml";
/// The agent's image at the start: this build's.
pub fn current_image() -> String {
    format!("ghcr.io/fleetnet/fleetnet:{}", fleetnet_agent::VERSION)
}

/// What an image runs in the box: a binary, and environment variables it
/// adds (a test build's version or fault).
#[derive(Debug, Clone)]
pub struct Image {
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
}

/// One node's agent replaced.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub node: String,
    pub image: String,
    /// When the old agent was told to stop.
    pub stopped: Instant,
    /// When the new one was ready (none: replaced again first, or never).
    pub ready: Option<Instant>,
}

/// The agent container of a DaemonSet manifest: its image and variables.
#[derive(Debug, Clone, PartialEq)]
struct Template {
    image: String,
    env: Vec<(String, String)>,
}

impl FleetInABox {
    /// Writes cluster `cluster`'s agent DaemonSet manifest, running `image`.
    pub fn write_daemonset(&self, cluster: u16, image: &str) -> io::Result<()> {
        self.write_manifest(
            cluster,
            DAEMONSET_FILE,
            &format!(
                "apiVersion: apps/v1\nkind: DaemonSet\n\
                 metadata: {{ name: fleetnet-agent, namespace: fleetnet-system }}\n\
                 spec:\n  selector: {{ matchLabels: {{ app: fleetnet-agent }} }}\n  template:\n\
                 \x20   metadata: {{ labels: {{ app: fleetnet-agent }} }}\n    spec:\n      containers:\n\
                 \x20       - name: agent\n          image: '{image}'\n"
            ),
        )
    }

    /// Every cluster's DaemonSet manifest with this build's image, and
    /// every agent started from it with `--keep-pins`, as the DaemonSet
    /// starts them; waits until each is ready.
    pub fn start_agents_as_daemonset(&self) -> io::Result<()> {
        for cluster in 1..=self.spec.clusters {
            self.write_daemonset(cluster, &current_image())?;
        }
        let binary = agent_binary();
        for node in &self.nodes {
            node.start_agent_with(&binary, &["--keep-pins"])?;
        }
        for node in &self.nodes {
            node.wait_ready(Duration::from_secs(60))?;
        }
        Ok(())
    }

    /// Plays kubelet for every cluster's DaemonSet until `stop`, running
    /// images as `images` says; what it replaced, in order. The agents are
    /// taken to run what the manifests said when it started.
    pub fn kubelet(
        &self,
        images: &BTreeMap<String, Image>,
        stop: &AtomicBool,
    ) -> io::Result<Vec<Replacement>> {
        let clusters: Vec<u16> = (1..=self.spec.clusters).collect();
        let mut running: BTreeMap<String, Template> = BTreeMap::new();
        for node in &self.nodes {
            running.insert(node.id.clone(), self.template(node.cluster_id)?);
        }
        let mut replacements: Vec<Replacement> = Vec::new();
        // Per cluster, the node being replaced and its replacement's index.
        let mut in_flight: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            for &cluster in &clusters {
                // A half-written manifest is read again next round.
                let Ok(wanted) = self.template(cluster) else {
                    continue;
                };
                if let Some(&(node, replacement)) = in_flight.get(&cluster) {
                    let node = &self.nodes[node];
                    if node.ready_since_start() {
                        replacements[replacement]
                            .ready
                            .get_or_insert_with(Instant::now);
                        in_flight.remove(&cluster);
                    } else if running[&node.id] == wanted {
                        continue;
                    }
                }
                let next = self
                    .nodes
                    .iter()
                    .position(|node| node.cluster_id == cluster && running[&node.id] != wanted);
                let Some(index) = next else {
                    continue;
                };
                let node = &self.nodes[index];
                let image = images.get(&wanted.image).ok_or_else(|| {
                    io::Error::other(format!(
                        "the kubelet knows no image {} (ErrImagePull)",
                        wanted.image
                    ))
                })?;
                let stopped = Instant::now();
                node.stop_agent()?;
                let mut env = image.env.clone();
                env.extend(wanted.env.iter().cloned());
                node.start_agent_with_env(&image.binary, &["--keep-pins"], &env)?;
                running.insert(node.id.clone(), wanted.clone());
                in_flight.insert(cluster, (index, replacements.len()));
                replacements.push(Replacement {
                    node: node.id.clone(),
                    image: wanted.image.clone(),
                    stopped,
                    ready: None,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (node, replacement) in in_flight.values() {
            if self.nodes[*node].ready_since_start() {
                replacements[*replacement]
                    .ready
                    .get_or_insert_with(Instant::now);
            }
        }
        Ok(replacements)
    }

    /// The agent container's image and variables in `cluster`'s manifest.
    fn template(&self, cluster: u16) -> io::Result<Template> {
        let text = fs::read_to_string(self.manifests_dir(cluster).join(DAEMONSET_FILE))?;
        let daemonset: serde_yaml::Value = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|document| serde_yaml::Value::deserialize(document).ok())
            .find(|document| document["kind"].as_str() == Some("DaemonSet"))
            .ok_or_else(|| io::Error::other("no DaemonSet in the manifest"))?;
        let containers = daemonset["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .ok_or_else(|| io::Error::other("the DaemonSet has no containers"))?;
        let agent = containers
            .iter()
            .find(|c| c["name"].as_str() == Some("agent"))
            .ok_or_else(|| io::Error::other("the DaemonSet has no agent container"))?;
        let env = agent["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_string(),
                    v["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        Ok(Template {
            image: agent["image"].as_str().unwrap_or_default().to_string(),
            env,
        })
    }
}

/// The test build of the agent (`cargo xtask test` builds it next to the
/// `fleetnet` binary: the `test-builds` feature), or `$FLEETNET_TEST_BUILD_BIN`.
pub fn test_build_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEETNET_TEST_BUILD_BIN") {
        return path.into();
    }
    let binary = agent_binary().with_file_name("fleetnet-test-build");
    assert!(
        binary.exists(),
        "{} is missing: `cargo xtask test` builds it (cargo build -p fleetnet-cli --features \
         test-builds, copied there), or set FLEETNET_TEST_BUILD_BIN",
        binary.display()
    );
    binary
}
