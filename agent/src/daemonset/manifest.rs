//! The agent's DaemonSet as a manifest in the `manifests` source's
//! directory: found by kind, name and namespace among its YAML files,
//! rewritten in place (the file replaced whole, atomically; the
//! documents are written back as YAML, without their comments).

use std::{
    fs,
    path::{Path, PathBuf},
};

use fleetnet_fleet::model::AgentSpec;
use serde::Deserialize;

use super::rewrite::rewrite;
use crate::config::DaemonSetSettings;

/// Rewrites the DaemonSet's manifest to run `agent`; the image written
/// when it changed.
pub(super) fn write(
    directory: &Path,
    settings: &DaemonSetSettings,
    agent: Option<&AgentSpec>,
) -> Result<Option<String>, String> {
    let (path, mut documents, index) = find(directory, settings)?;
    let mut daemonset = serde_json::to_value(&documents[index])
        .map_err(|error| format!("{}: {error}", path.display()))?;
    let Some(change) = rewrite(&daemonset, &settings.container, agent)
        .map_err(|error| format!("{}: {error}", path.display()))?
    else {
        return Ok(None);
    };
    change.apply_to(&mut daemonset);
    documents[index] = serde_yaml::to_value(&daemonset).map_err(|error| error.to_string())?;
    let mut text = String::new();
    for document in &documents {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(document).map_err(|error| error.to_string())?);
    }
    let partial = path.with_extension("yaml.partial");
    fs::write(&partial, text)
        .and_then(|()| fs::rename(&partial, &path))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    Ok(Some(change.image))
}

/// The file holding the DaemonSet, its documents, and which one it is.
fn find(
    directory: &Path,
    settings: &DaemonSetSettings,
) -> Result<(PathBuf, Vec<serde_yaml::Value>, usize), String> {
    let mut files: Vec<PathBuf> = fs::read_dir(directory)
        .map_err(|error| format!("cannot read {}: {error}", directory.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    for path in files {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|document| serde_yaml::Value::deserialize(document).ok())
            .filter(|value| !value.is_null())
            .collect();
        let found = documents.iter().position(|document| {
            let metadata = &document["metadata"];
            document["kind"].as_str() == Some("DaemonSet")
                && metadata["name"].as_str() == Some(settings.name.as_str())
                && metadata["namespace"]
                    .as_str()
                    .is_none_or(|namespace| namespace == settings.namespace)
        });
        if let Some(index) = found {
            return Ok((path, documents, index));
        }
    }
    Err(format!(
        "no manifest in {} holds DaemonSet {}/{} (see daemonset in the config)",
        directory.display(),
        settings.namespace,
        settings.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemonset_manifest_is_found_and_rewritten_in_place() {
        let dir = std::env::temp_dir().join(format!("fleetnet-ds-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("pods.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: { name: p }\n",
        )
        .unwrap();
        fs::write(
            dir.join("agent.yaml"),
            "# the agent\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: c }\n---\n\
             apiVersion: apps/v1\nkind: DaemonSet\nmetadata: { name: fleetnet-agent }\n\
             spec:\n  template:\n    spec:\n      containers:\n        - { name: agent, image: 'fleetnet:0.1.0' }\n",
        )
        .unwrap();
        let settings = DaemonSetSettings::default();
        let spec = AgentSpec {
            image: "fleetnet:0.2.0".into(),
            ..AgentSpec::default()
        };
        assert_eq!(
            write(&dir, &settings, Some(&spec)).unwrap().as_deref(),
            Some("fleetnet:0.2.0")
        );
        let text = fs::read_to_string(dir.join("agent.yaml")).unwrap();
        let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(documents[0]["kind"].as_str(), Some("ConfigMap"));
        assert_eq!(
            documents[1]["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
            Some("fleetnet:0.2.0")
        );
        assert_eq!(write(&dir, &settings, Some(&spec)).unwrap(), None);
        assert_eq!(
            write(&dir, &settings, None).unwrap().as_deref(),
            Some("fleetnet:0.1.0")
        );
        let other = DaemonSetSettings {
            name: "cilium".into(),
            ..settings
        };
        assert!(
            write(&dir, &other, None)
                .unwrap_err()
                .contains("holds DaemonSet fleetnet-system/cilium")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
