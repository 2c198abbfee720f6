//! What a fleet revision carrying the agent changes in its config: the
//! restart-requiring settings, which reach a restarted agent through its
//! DaemonSet's environment (`FLEETNET_SETTINGS`, JSON), laid over the
//! config file before it is validated; and the image it was started from
//! (`FLEETNET_IMAGE`), which it reports.

use fleetnet_fleet::model::agent::{MapSizes, RestartSettings, ServiceSizes};
use serde::Deserialize;

use super::AgentConfig;

/// Restart settings from a fleet revision, as JSON.
pub const SETTINGS_VARIABLE: &str = "FLEETNET_SETTINGS";
/// The image the DaemonSet named for this agent.
pub const IMAGE_VARIABLE: &str = "FLEETNET_IMAGE";

/// The agent's own DaemonSet: where a fleet revision's agent is written
/// (through the Kubernetes API, or in the manifests directory).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DaemonSetSettings {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_name")]
    pub name: String,
    /// The agent's container in it.
    #[serde(default = "default_container")]
    pub container: String,
}

impl Default for DaemonSetSettings {
    fn default() -> Self {
        Self {
            namespace: default_namespace(),
            name: default_name(),
            container: default_container(),
        }
    }
}

fn default_namespace() -> String {
    "fleetnet-system".into()
}
fn default_name() -> String {
    "fleetnet-agent".into()
}
fn default_container() -> String {
    "agent".into()
}

impl AgentConfig {
    /// Lays `FLEETNET_SETTINGS` (when set) over the file's settings.
    pub(super) fn overlay_restart_settings(&mut self, json: &str) -> Result<(), String> {
        let settings = RestartSettings::deserialize(&mut serde_json::Deserializer::from_str(json))
            .map_err(|error| {
                format!(
                    "{SETTINGS_VARIABLE} (a fleet revision's agent settings) does not read: {error}"
                )
            })?;
        let (bpf, services) = (&mut self.bpf, &mut self.services);
        let MapSizes {
            ipcache_max_entries,
            endpoints_max_entries,
            metrics_max_entries,
            backends_max_entries,
            conntrack_max_entries,
            policy_max_entries,
        } = settings.bpf;
        for (value, field) in [
            (ipcache_max_entries, &mut bpf.ipcache_max_entries),
            (endpoints_max_entries, &mut bpf.endpoints_max_entries),
            (metrics_max_entries, &mut bpf.metrics_max_entries),
            (backends_max_entries, &mut bpf.backends_max_entries),
            (conntrack_max_entries, &mut bpf.conntrack_max_entries),
            (policy_max_entries, &mut bpf.policy_max_entries),
        ] {
            if let Some(value) = value {
                *field = value;
            }
        }
        let ServiceSizes {
            maglev_table_size,
            max_services,
        } = settings.services;
        if let Some(value) = maglev_table_size {
            services.maglev_table_size = value;
        }
        if let Some(value) = max_services {
            services.max_services = value;
        }
        Ok(())
    }

    /// Every restart setting in force, for the agent's report.
    pub fn restart_settings(&self) -> RestartSettings {
        RestartSettings {
            bpf: MapSizes {
                ipcache_max_entries: Some(self.bpf.ipcache_max_entries),
                endpoints_max_entries: Some(self.bpf.endpoints_max_entries),
                metrics_max_entries: Some(self.bpf.metrics_max_entries),
                backends_max_entries: Some(self.bpf.backends_max_entries),
                conntrack_max_entries: Some(self.bpf.conntrack_max_entries),
                policy_max_entries: Some(self.bpf.policy_max_entries),
            },
            services: ServiceSizes {
                maglev_table_size: Some(self.services.maglev_table_size),
                max_services: Some(self.services.max_services),
            },
        }
    }
}
