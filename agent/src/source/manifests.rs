//! The `manifests` source: a directory of Kubernetes YAML (multi-document
//! files, `List`s), read into the same k8s-openapi types the `kube` source
//! uses, and read again whenever a file in it changes (inotify, with a
//! periodic rescan as a safety net).
//!
//! A file that stops parsing keeps the objects it last had, with one error
//! naming the file, so a half-saved edit never deletes a cluster's pods.

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::Deserialize;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, error, info};

use super::{Kind, Object, SourceEvent};

/// A rescan happens at least this often, whatever inotify says.
const RESCAN_EVERY: Duration = Duration::from_secs(10);
/// Changes arriving within this window are read in one pass.
const SETTLE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    #[error(
        "manifests directory {0} does not exist or is not a directory; create it or fix source.directory"
    )]
    NoDirectory(String),
    #[error("cannot watch manifests directory {dir}: {source}")]
    Watch { dir: String, source: std::io::Error },
}

/// Objects of all YAML documents in `text` that fleetnet reads; other kinds
/// are skipped. The error names the document that failed.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, String> {
    let mut objects = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|error| format!("document {}: {error}", index + 1))?;
        if value.is_null() {
            continue;
        }
        collect(value, &mut objects).map_err(|error| format!("document {}: {error}", index + 1))?;
    }
    Ok(objects)
}

fn collect(value: serde_yaml::Value, objects: &mut Vec<Object>) -> Result<(), String> {
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let name = name_of(&value);
    let typed = |error: serde_yaml::Error| format!("{kind} {name}: {error}");
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            #[derive(Deserialize)]
            struct List {
                #[serde(default)]
                items: Vec<serde_yaml::Value>,
            }
            let list: List = serde_yaml::from_value(value).map_err(typed)?;
            for item in list.items {
                collect(item, objects)?;
            }
            return Ok(());
        }
        ("v1", "Node") => Object::Node(serde_yaml::from_value(value).map_err(typed)?),
        ("v1", "Pod") => Object::Pod(serde_yaml::from_value(value).map_err(typed)?),
        ("v1", "Namespace") => Object::Namespace(serde_yaml::from_value(value).map_err(typed)?),
        ("v1", "Service") => Object::Service(serde_yaml::from_value(value).map_err(typed)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(serde_yaml::from_value(value).map_err(typed)?)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            Object::NetworkPolicy(serde_yaml::from_value(value).map_err(typed)?)
        }
        ("", _) | (_, "") => return Err("apiVersion and kind are required".into()),
        _ => {
            debug!(%api_version, %kind, "skipping a kind the agent does not read");
            return Ok(());
        }
    };
    if object.key().name.is_empty() {
        return Err(format!("{kind} without metadata.name"));
    }
    objects.push(object);
    Ok(())
}

fn name_of(value: &serde_yaml::Value) -> String {
    value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("(unnamed)")
        .to_string()
}

/// The manifests directory as last read.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

struct FileState {
    signature: (SystemTime, u64),
    objects: Vec<Object>,
}

impl ManifestDir {
    pub fn new(dir: &Path) -> Result<Self, ManifestsError> {
        if !dir.is_dir() {
            return Err(ManifestsError::NoDirectory(dir.display().to_string()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        })
    }

    /// Reads changed files again; true when the objects may have changed.
    pub fn scan(&mut self) -> bool {
        let mut seen = Vec::new();
        let mut changed = false;
        for path in manifest_files(&self.dir) {
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            let signature = (
                metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                metadata.len(),
            );
            seen.push(path.clone());
            if self
                .files
                .get(&path)
                .is_some_and(|file| file.signature == signature)
            {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|error| error.to_string())
                .and_then(|text| parse_documents(&text));
            match parsed {
                Ok(objects) => {
                    self.files.insert(path, FileState { signature, objects });
                }
                Err(reason) => {
                    error!(
                        file = %path.display(),
                        "cannot read manifest file ({reason}); keeping its previous objects until it is fixed"
                    );
                    let objects = self
                        .files
                        .remove(&path)
                        .map(|file| file.objects)
                        .unwrap_or_default();
                    self.files.insert(path, FileState { signature, objects });
                }
            }
            changed = true;
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        changed || self.files.len() != before
    }

    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.files.values().flat_map(|file| file.objects.iter())
    }

    /// The whole directory as a listing.
    pub fn listing(&self) -> Vec<SourceEvent> {
        let mut events: Vec<SourceEvent> = Kind::ALL
            .iter()
            .map(|kind| SourceEvent::Relisting(*kind))
            .collect();
        events.extend(self.objects().cloned().map(SourceEvent::Applied));
        events.extend(Kind::ALL.iter().map(|kind| SourceEvent::Listed(*kind)));
        events
    }
}

/// YAML and JSON files directly in `dir`, hidden files (editors' and
/// atomic writers' temporaries) excluded.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            let manifest = ["yaml", "yml", "json"]
                .iter()
                .any(|ext| path.extension().is_some_and(|e| e == *ext));
            manifest && !name.starts_with('.') && path.is_file()
        })
        .collect();
    files.sort();
    files
}

/// Watches `dir` and sends a full listing at start and after every change,
/// until the receiver is dropped.
pub async fn run(dir: PathBuf, events: mpsc::Sender<SourceEvent>) -> Result<(), ManifestsError> {
    let mut manifests = ManifestDir::new(&dir)?;
    let watch_error = |source: std::io::Error| ManifestsError::Watch {
        dir: dir.display().to_string(),
        source,
    };
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|error| watch_error(error.into()))?;
    inotify
        .add_watch(
            &dir,
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MODIFY,
        )
        .map_err(|error| watch_error(error.into()))?;
    // SAFETY: the Inotify owns its descriptor, and the AsyncFd owns the
    // Inotify: the descriptor stays open and the same while registered.
    let inotify = unsafe { AsyncFd::register(InotifyFd(inotify)) }
        .map_err(|error| watch_error(error.into_parts().1))?;
    manifests.scan();
    info!(dir = %dir.display(), objects = manifests.objects().count(), "reading manifests");
    loop {
        for event in manifests.listing() {
            if events.send(event).await.is_err() {
                return Ok(());
            }
        }
        loop {
            tokio::select! {
                ready = inotify.readable() => {
                    if let Ok(mut guard) = ready {
                        tokio::time::sleep(SETTLE).await;
                        let _ = guard.get_inner().0.read_events();
                        guard.clear_ready();
                    }
                }
                _ = tokio::time::sleep(RESCAN_EVERY) => {}
            }
            if manifests.scan() {
                break;
            }
        }
    }
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_unknown_kinds_are_handled() {
        let objects = parse_documents(
            "
apiVersion: v1
kind: List
items:
  - { apiVersion: v1, kind: Namespace, metadata: { name: a } }
  - { apiVersion: v1, kind: Namespace, metadata: { name: b } }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: skipped }
---
",
        )
        .unwrap();
        assert_eq!(objects.len(), 2);
    }

    #[test]
    fn errors_name_the_document_and_object() {
        let error = parse_documents(
            "
apiVersion: v1
kind: Namespace
metadata: { name: fine }
---
apiVersion: v1
kind: Pod
metadata: { name: broken }
spec: { containers: notalist }
",
        )
        .unwrap_err();
        assert!(error.starts_with("document 2: Pod broken:"), "{error}");
        let error = parse_documents("metadata: { name: x }").unwrap_err();
        assert_eq!(error, "document 1: apiVersion and kind are required");
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_objects() {
        let dir = std::env::temp_dir().join(format!("fleetnet-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ns.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Namespace\nmetadata: { name: a }\n",
        )
        .unwrap();
        std::fs::write(dir.join(".ns.yaml.tmp"), "garbage: [").unwrap();
        let mut manifests = ManifestDir::new(&dir).unwrap();
        assert!(manifests.scan());
        assert_eq!(manifests.objects().count(), 1);
        assert!(!manifests.scan(), "nothing changed");

        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Namespace\nmetadata: { name: a }\n---\nkind: [",
        )
        .unwrap();
        assert!(manifests.scan());
        assert_eq!(
            manifests.objects().count(),
            1,
            "the broken file keeps its namespace"
        );

        std::fs::remove_file(&file).unwrap();
        assert!(manifests.scan());
        assert_eq!(manifests.objects().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            ManifestDir::new(&dir),
            Err(ManifestsError::NoDirectory(_))
        ));
    }
}
