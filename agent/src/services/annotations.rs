//! The annotations that make a Service global, as Cilium Cluster Mesh
//! users know them (with `fleetnet.io/global` as an alias):
//!
//! - `service.cilium.io/global: "true"`: one service across the clusters
//!   that define it; backends of every cluster are used;
//! - `service.cilium.io/shared: "false"`: use remote backends, export none;
//! - `service.cilium.io/affinity: local|remote|none`: prefer one side while
//!   it has a ready backend, fail over to the other when it has none.
//!
//! A value outside these makes the service not global, with a warning
//! naming the service and the value (a typo never silently exports).

use std::collections::BTreeMap;

pub const GLOBAL: &str = "service.cilium.io/global";
pub const GLOBAL_ALIAS: &str = "fleetnet.io/global";
pub const SHARED: &str = "service.cilium.io/shared";
pub const AFFINITY: &str = "service.cilium.io/affinity";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    #[default]
    None,
    Local,
    Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Global {
    /// Export this cluster's backends.
    pub shared: bool,
    pub affinity: Affinity,
}

/// Whether the service is global and how; `Err` is a sentence saying which
/// annotation value is wrong (the service is then treated as not global).
pub fn global(annotations: Option<&BTreeMap<String, String>>) -> Result<Option<Global>, String> {
    let Some(annotations) = annotations else {
        return Ok(None);
    };
    let flag = |key: &str| -> Result<Option<bool>, String> {
        match annotations.get(key).map(String::as_str) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(format!(
                "annotation {key} is {other:?}, expected \"true\" or \"false\""
            )),
        }
    };
    let global = match (flag(GLOBAL)?, flag(GLOBAL_ALIAS)?) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("annotations {GLOBAL} and {GLOBAL_ALIAS} disagree"));
        }
        (Some(value), _) | (None, Some(value)) => value,
        (None, None) => false,
    };
    if !global {
        return Ok(None);
    }
    let shared = flag(SHARED)?.unwrap_or(true);
    let affinity = match annotations.get(AFFINITY).map(String::as_str) {
        None | Some("none") => Affinity::None,
        Some("local") => Affinity::Local,
        Some("remote") => Affinity::Remote,
        Some(other) => {
            return Err(format!(
                "annotation {AFFINITY} is {other:?}, expected local, remote or none"
            ));
        }
    };
    Ok(Some(Global { shared, affinity }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<Global>, String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        global(Some(&map))
    }

    #[test]
    fn annotations_read_as_cilium_defines_them() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(global(None), Ok(None));
        assert_eq!(parse(&[(GLOBAL, "false")]), Ok(None));
        let default = Global {
            shared: true,
            affinity: Affinity::None,
        };
        assert_eq!(parse(&[(GLOBAL, "true")]), Ok(Some(default)));
        assert_eq!(parse(&[(GLOBAL_ALIAS, "true")]), Ok(Some(default)));
        assert_eq!(
            parse(&[(GLOBAL, "true"), (SHARED, "false"), (AFFINITY, "local")]),
            Ok(Some(Global {
                shared: false,
                affinity: Affinity::Local
            }))
        );
        assert_eq!(
            parse(&[(GLOBAL, "true"), (AFFINITY, "remote")])
                .unwrap()
                .unwrap()
                .affinity,
            Affinity::Remote
        );
        // Only global services care about the other two.
        assert_eq!(parse(&[(SHARED, "nonsense")]), Ok(None));
    }

    #[test]
    fn bad_values_name_the_annotation_and_the_value() {
        assert_eq!(
            parse(&[(GLOBAL, "yes")]),
            Err(
                "annotation service.cilium.io/global is \"yes\", expected \"true\" or \"false\""
                    .into()
            )
        );
        assert!(
            parse(&[(GLOBAL, "true"), (SHARED, "no")])
                .unwrap_err()
                .contains("service.cilium.io/shared is \"no\"")
        );
        assert!(
            parse(&[(GLOBAL, "true"), (AFFINITY, "nearest")])
                .unwrap_err()
                .contains("expected local, remote or none")
        );
        assert!(
            parse(&[(GLOBAL, "true"), (GLOBAL_ALIAS, "false")])
                .unwrap_err()
                .contains("disagree")
        );
    }
}
