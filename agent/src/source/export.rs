//! Which namespaces this cluster exports to the rest of the mesh: the
//! pods of an exported namespace are published with their identities for
//! every cluster to see; the others only for this cluster's own nodes.
//! Other clusters still reach them, through the node's pod CIDR and the
//! cluster's identity. Global Services' backends are exported whatever
//! their namespace.
//!
//! A namespace says so with Cilium's annotation
//! `clustermesh.cilium.io/global` (or fleetnet's `fleetnet.io/export`):
//! `"true"` exports it, `"false"` keeps it in, and without either the
//! cluster's `mesh.export` decides.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Cilium's annotation for a namespace shared with the cluster mesh.
pub const CILIUM_GLOBAL_ANNOTATION: &str = "clustermesh.cilium.io/global";
/// fleetnet's name for it; when both are set, this one wins.
pub const EXPORT_ANNOTATION: &str = "fleetnet.io/export";

/// What a namespace without an export annotation does (`mesh.export`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportMode {
    /// Every namespace is exported unless annotated `"false"`: every
    /// policy naming another cluster's pods keeps matching them, as in a
    /// mesh without export control.
    #[default]
    All,
    /// Only namespaces annotated `"true"` are exported: what a mesh of
    /// thousands of clusters needs, its agents and etcd then holding what
    /// is shared, not every pod of the fleet.
    Annotated,
}

/// A namespace's export annotation, read: `Some(true)`/`Some(false)` when
/// it says so, `None` without one, and an error sentence for a value that
/// is neither.
pub fn annotation(annotations: Option<&BTreeMap<String, String>>) -> Result<Option<bool>, String> {
    let Some(annotations) = annotations else {
        return Ok(None);
    };
    for key in [EXPORT_ANNOTATION, CILIUM_GLOBAL_ANNOTATION] {
        if let Some(value) = annotations.get(key) {
            return match value.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(format!(
                    "annotation {key}: {value:?} is neither \"true\" nor \"false\"; \
                     the namespace follows mesh.export until it is fixed"
                )),
            };
        }
    }
    Ok(None)
}

impl ExportMode {
    /// Whether a namespace with `annotations` is exported.
    pub fn exports(self, annotations: Option<&BTreeMap<String, String>>) -> bool {
        annotation(annotations)
            .ok()
            .flatten()
            .unwrap_or(self == ExportMode::All)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_override_the_cluster_default_and_fleetnets_wins() {
        let none = annotated(&[]);
        let global = annotated(&[(CILIUM_GLOBAL_ANNOTATION, "true")]);
        let kept = annotated(&[(EXPORT_ANNOTATION, "False")]);
        let both = annotated(&[
            (CILIUM_GLOBAL_ANNOTATION, "true"),
            (EXPORT_ANNOTATION, "false"),
        ]);
        let bad = annotated(&[(EXPORT_ANNOTATION, "yes")]);
        for (annotations, all, only_annotated) in [
            (None, true, false),
            (Some(&none), true, false),
            (Some(&global), true, true),
            (Some(&kept), false, false),
            (Some(&both), false, false),
            // A value that is neither follows the default.
            (Some(&bad), true, false),
        ] {
            assert_eq!(ExportMode::All.exports(annotations), all, "{annotations:?}");
            assert_eq!(
                ExportMode::Annotated.exports(annotations),
                only_annotated,
                "{annotations:?}"
            );
        }
        let error = annotation(Some(&bad)).unwrap_err();
        assert!(error.contains("fleetnet.io/export: \"yes\""), "{error}");
    }
}
