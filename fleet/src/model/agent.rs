//! A revision that carries the agent itself: the image its DaemonSet runs
//! and the settings that take effect only when an agent starts (map sizes,
//! the Maglev table). The cluster's leader agent writes them into its own
//! DaemonSet; each restarted agent reports what it runs ([`AgentRunning`]).

use serde::{Deserialize, Serialize};

/// `agent: { image, settings }` in a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentSpec {
    /// The container image: `registry/name:tag` or `…@sha256:…`.
    pub image: String,
    /// Over the agents' config file, with its keys; unset keeps the file's.
    #[serde(default, skip_serializing_if = "RestartSettings::is_empty")]
    pub settings: RestartSettings,
}

/// Settings an agent reads only when it starts, as in its config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestartSettings {
    #[serde(default, skip_serializing_if = "MapSizes::is_empty")]
    pub bpf: MapSizes,
    #[serde(default, skip_serializing_if = "ServiceSizes::is_empty")]
    pub services: ServiceSizes,
}

/// `bpf.*-max-entries`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MapSizes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipcache_max_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints_max_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_max_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends_max_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_max_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_max_entries: Option<u32>,
}

/// `services.*` sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceSizes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_table_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_services: Option<u32>,
}

impl MapSizes {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn named(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("bpf.ipcache-max-entries", self.ipcache_max_entries),
            ("bpf.endpoints-max-entries", self.endpoints_max_entries),
            ("bpf.metrics-max-entries", self.metrics_max_entries),
            ("bpf.backends-max-entries", self.backends_max_entries),
            ("bpf.conntrack-max-entries", self.conntrack_max_entries),
            ("bpf.policy-max-entries", self.policy_max_entries),
        ]
    }
}

impl ServiceSizes {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn named(&self) -> [(&'static str, Option<u32>); 2] {
        [
            ("services.maglev-table-size", self.maglev_table_size),
            ("services.max-services", self.max_services),
        ]
    }
}

impl RestartSettings {
    pub fn is_empty(&self) -> bool {
        self.bpf.is_empty() && self.services.is_empty()
    }

    /// Every setting by its config key, set or not.
    pub fn named(&self) -> Vec<(&'static str, Option<u32>)> {
        let mut named = self.bpf.named().to_vec();
        named.extend(self.services.named());
        named
    }

    /// The settings `self` asks for that `running` does not have, as
    /// `key: running -> wanted`; empty when every one is in force.
    pub fn differences(&self, running: &RestartSettings) -> Vec<String> {
        self.named()
            .into_iter()
            .zip(running.named())
            .filter_map(|((key, wanted), (_, running))| {
                let wanted = wanted?;
                (running != Some(wanted)).then(|| {
                    let running = running.map_or("unknown".to_string(), |n| n.to_string());
                    format!("{key} {running} (not {wanted})")
                })
            })
            .collect()
    }
}

impl AgentSpec {
    /// The first problem, as one sentence. Values are checked as the
    /// agent checks its config when it starts.
    pub fn validate(&self) -> Result<(), String> {
        let image = self.image.trim();
        if image.is_empty() || image != self.image || image.contains(char::is_whitespace) {
            return Err(format!(
                "agent.image {:?} must be an image reference like ghcr.io/fleetnet/fleetnet:0.2.0",
                self.image
            ));
        }
        for (key, value) in self.settings.named() {
            if value == Some(0) {
                return Err(format!("agent.settings: {key} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// What an agent runs, in its report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentRunning {
    /// The image its DaemonSet named when it started (empty: not started
    /// by a fleet revision's DaemonSet change, or outside Kubernetes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Every restart setting in force.
    #[serde(default)]
    pub settings: RestartSettings,
}

impl AgentRunning {
    /// Why this agent does not run `spec`; `None` when it does.
    pub fn lacks(&self, spec: &AgentSpec) -> Option<String> {
        if self.image != spec.image {
            let running = if self.image.is_empty() {
                "an image no revision named"
            } else {
                self.image.as_str()
            };
            return Some(format!("runs {running}, not {}", spec.image));
        }
        let differences = spec.settings.differences(&self.settings);
        (!differences.is_empty()).then(|| format!("runs with {}", differences.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_runs_a_spec_when_image_and_every_setting_asked_for_match() {
        let spec: AgentSpec = serde_yaml::from_str(
            "{ image: 'fleetnet:0.2.0', settings: { bpf: { ipcache-max-entries: 4096 } } }",
        )
        .unwrap();
        spec.validate().unwrap();
        let mut running = AgentRunning {
            image: "fleetnet:0.1.0".into(),
            settings: RestartSettings::default(),
        };
        assert_eq!(
            running.lacks(&spec).unwrap(),
            "runs fleetnet:0.1.0, not fleetnet:0.2.0"
        );
        running.image = "fleetnet:0.2.0".into();
        running.settings.bpf.ipcache_max_entries = Some(512);
        running.settings.services.maglev_table_size = Some(16381);
        assert_eq!(
            running.lacks(&spec).unwrap(),
            "runs with bpf.ipcache-max-entries 512 (not 4096)"
        );
        running.settings.bpf.ipcache_max_entries = Some(4096);
        assert_eq!(running.lacks(&spec), None, "unasked settings do not matter");
        assert!(
            serde_yaml::from_str::<AgentSpec>("{ image: x, settings: { bpf: { maps: 3 } } }")
                .is_err()
        );
        let zero: AgentSpec =
            serde_yaml::from_str("{ image: x, settings: { services: { maglev-table-size: 0 } } }")
                .unwrap();
        assert_eq!(
            zero.validate().unwrap_err(),
            "agent.settings: services.maglev-table-size must be at least 1"
        );
    }
}
