//! What a fleet revision's agent changes in the agent's DaemonSet, on its
//! JSON (as the API serves it, or a manifest read as YAML): the agent
//! container's image, its `FLEETNET_IMAGE` and `FLEETNET_SETTINGS`
//! variables, and the pod template's settings checksum annotation, whose
//! change makes the DaemonSet roll even when only settings change. The
//! image the DaemonSet ran before any revision changed it is kept in an
//! annotation of the DaemonSet, so a rollback to a revision without an
//! agent puts it back.

use fleetnet_fleet::model::AgentSpec;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{IMAGE_VARIABLE, SETTINGS_VARIABLE};

/// On the DaemonSet: its image before a fleet revision changed it.
pub const BASE_IMAGE_ANNOTATION: &str = "fleetnet.io/base-image";
/// On the pod template: a checksum of the revision's agent settings.
pub const CHECKSUM_ANNOTATION: &str = "fleetnet.io/settings-checksum";

/// The fields a rewrite sets; `None` removes one.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub base_image: Option<String>,
    pub checksum: Option<String>,
    /// The pod template's containers, whole (a merge patch replaces lists).
    pub containers: Value,
    /// The image the agent container gets.
    pub image: String,
}

/// The rewrite that makes `daemonset` run `wanted` (none: its own image
/// back, the revision's variables gone); `Ok(None)` when it already does.
pub fn rewrite(
    daemonset: &Value,
    container: &str,
    wanted: Option<&AgentSpec>,
) -> Result<Option<Rewrite>, String> {
    let mut containers = daemonset["spec"]["template"]["spec"]["containers"].clone();
    let list = containers
        .as_array_mut()
        .ok_or("the DaemonSet has no spec.template.spec.containers")?;
    let agent = list
        .iter_mut()
        .find(|c| c["name"] == container)
        .ok_or_else(|| {
            format!("the DaemonSet has no container {container:?} (set daemonset.container)")
        })?;
    let current_image = agent["image"].as_str().unwrap_or_default().to_string();
    let base_now = daemonset["metadata"]["annotations"][BASE_IMAGE_ANNOTATION]
        .as_str()
        .map(str::to_string);
    let checksum_now = daemonset["spec"]["template"]["metadata"]["annotations"]
        [CHECKSUM_ANNOTATION]
        .as_str()
        .map(str::to_string);
    let (image, base_image, variables, checksum) = match wanted {
        Some(spec) => {
            let settings =
                serde_json::to_string(&spec.settings).expect("restart settings always serialize");
            let checksum = hex(&Sha256::digest(format!("{}\n{settings}", spec.image)));
            (
                spec.image.clone(),
                Some(base_now.clone().unwrap_or_else(|| current_image.clone())),
                vec![
                    (IMAGE_VARIABLE, spec.image.clone()),
                    (SETTINGS_VARIABLE, settings),
                ],
                Some(checksum),
            )
        }
        // Never changed by a revision: nothing to put back.
        None if base_now.is_none() => return Ok(None),
        None => (base_now.clone().unwrap_or_default(), None, Vec::new(), None),
    };
    let mut env: Vec<Value> = agent["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v["name"] != IMAGE_VARIABLE && v["name"] != SETTINGS_VARIABLE)
        .collect();
    env.extend(
        variables
            .into_iter()
            .map(|(name, value)| json!({ "name": name, "value": value })),
    );
    let unchanged = current_image == image
        && agent["env"].as_array().cloned().unwrap_or_default() == env
        && base_now == base_image
        && checksum_now == checksum;
    if unchanged {
        return Ok(None);
    }
    agent["image"] = Value::String(image.clone());
    agent["env"] = Value::Array(env);
    Ok(Some(Rewrite {
        base_image,
        checksum,
        containers,
        image,
    }))
}

impl Rewrite {
    /// The JSON merge patch (RFC 7386) for it, conditional on
    /// `resource_version` so a concurrent change is not overwritten.
    pub fn merge_patch(&self, resource_version: &str) -> Value {
        json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": { BASE_IMAGE_ANNOTATION: self.base_image },
            },
            "spec": { "template": {
                "metadata": { "annotations": { CHECKSUM_ANNOTATION: self.checksum } },
                "spec": { "containers": self.containers },
            }},
        })
    }

    /// Applies it to a DaemonSet document (a manifest) in place.
    pub fn apply_to(&self, daemonset: &mut Value) {
        set_annotation(
            &mut daemonset["metadata"],
            BASE_IMAGE_ANNOTATION,
            self.base_image.as_deref(),
        );
        let template = &mut daemonset["spec"]["template"];
        set_annotation(
            &mut template["metadata"],
            CHECKSUM_ANNOTATION,
            self.checksum.as_deref(),
        );
        template["spec"]["containers"] = self.containers.clone();
    }
}

fn set_annotation(metadata: &mut Value, key: &str, value: Option<&str>) {
    if !metadata.is_object() {
        *metadata = json!({});
    }
    let annotations = &mut metadata["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    let map = annotations.as_object_mut().expect("made an object above");
    match value {
        Some(value) => {
            map.insert(key.into(), Value::String(value.into()));
        }
        None => {
            map.remove(key);
        }
    }
    if map.is_empty()
        && let Some(metadata) = metadata.as_object_mut()
    {
        metadata.remove("annotations");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemonset() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "fleetnet-agent", "namespace": "fleetnet-system" },
            "spec": { "template": {
                "metadata": { "labels": { "app": "a" } },
                "spec": { "containers": [
                    { "name": "agent", "image": "fleetnet:0.1.0",
                      "env": [ { "name": "FLEETNET_NODE_NAME", "value": "n" } ] },
                    { "name": "sidecar", "image": "other:1" },
                ]},
            }},
        })
    }

    #[test]
    fn a_revision_agent_is_written_and_taken_back() {
        let spec: AgentSpec = serde_yaml::from_str(
            "{ image: 'fleetnet:0.2.0', settings: { bpf: { ipcache-max-entries: 4096 } } }",
        )
        .unwrap();
        let mut ds = daemonset();
        assert_eq!(rewrite(&ds, "agent", None).unwrap(), None, "never changed");
        let change = rewrite(&ds, "agent", Some(&spec)).unwrap().unwrap();
        assert_eq!(change.base_image.as_deref(), Some("fleetnet:0.1.0"));
        change.apply_to(&mut ds);
        let agent = &ds["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(agent["image"], "fleetnet:0.2.0");
        assert_eq!(agent["env"][0]["name"], "FLEETNET_NODE_NAME");
        assert_eq!(
            agent["env"][1],
            json!({"name": "FLEETNET_IMAGE", "value": "fleetnet:0.2.0"})
        );
        assert_eq!(
            agent["env"][2],
            json!({"name": "FLEETNET_SETTINGS", "value": r#"{"bpf":{"ipcache-max-entries":4096}}"#})
        );
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"][1]["image"],
            "other:1"
        );
        assert_eq!(
            rewrite(&ds, "agent", Some(&spec)).unwrap(),
            None,
            "idempotent"
        );

        // Another revision keeps the first base image; settings alone
        // change the checksum.
        let mut bigger = spec.clone();
        bigger.settings.bpf.ipcache_max_entries = Some(8192);
        let again = rewrite(&ds, "agent", Some(&bigger)).unwrap().unwrap();
        assert_eq!(again.base_image.as_deref(), Some("fleetnet:0.1.0"));
        assert_ne!(again.checksum, change.checksum);

        // Back to the DaemonSet's own.
        let back = rewrite(&ds, "agent", None).unwrap().unwrap();
        back.apply_to(&mut ds);
        assert_eq!(ds, daemonset(), "exactly as before, annotations gone");
        let patch = change.merge_patch("42");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(
            rewrite(&ds, "proxy", Some(&spec)).unwrap_err(),
            "the DaemonSet has no container \"proxy\" (set daemonset.container)"
        );
    }
}
