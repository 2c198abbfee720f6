//! Writes services into the datapath, incrementally: a frontend keeps its
//! service id, a backend its backend id, and a changed backend set rewrites
//! only the Maglev slots that moved. Order keeps every state consistent for
//! packets in flight: backends first, then the Maglev slice, then the
//! frontend's entry; removal in the opposite order.
//!
//! Ids found in reused pinned maps are adopted, so a restarting agent never
//! points a frontend at another service's slice; what no frontend wants
//! after the first pass is removed.

use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::{Backend, IpKey, ServiceInfo, ServiceKey};
use tracing::{error, warn};

use crate::{
    datapath::{DatapathMaps, MapAccessError},
    metrics::{MapLabel, Metrics},
    services::{
        maglev,
        merge::{ActiveBackend, Frontend},
    },
};

struct Programmed {
    info: ServiceInfo,
    backends: Vec<ActiveBackend>,
    slice: Option<Vec<u32>>,
}

pub struct ServiceProgrammer {
    table_size: u32,
    max_ids: u32,
    frontends: BTreeMap<ServiceKey, Programmed>,
    /// The service ids `frontends` hold.
    used_ids: BTreeSet<u32>,
    backend_ids: BTreeMap<ActiveBackend, u32>,
    /// Backend ids in the map not (or no longer) used by any frontend.
    unused_backends: BTreeSet<u32>,
    warned_full: bool,
}

impl ServiceProgrammer {
    /// The service id of each programmed frontend.
    pub fn service_ids(&self) -> impl Iterator<Item = (&ServiceKey, u32)> {
        self.frontends
            .iter()
            .map(|(key, programmed)| (key, programmed.info.service_id))
    }

    /// Frontends and backends in the maps.
    pub fn counts(&self) -> (usize, usize) {
        (self.frontends.len(), self.backend_ids.len())
    }

    /// Starts from the services and backends the maps hold now.
    pub fn new(
        existing_services: BTreeMap<ServiceKey, ServiceInfo>,
        existing_backends: BTreeMap<u32, Backend>,
        table_size: u32,
        max_ids: u32,
    ) -> Self {
        let backend_ids = existing_backends
            .iter()
            .filter_map(|(id, backend)| {
                let ip = backend.addr.as_v4()?.into();
                let active = ActiveBackend {
                    cluster_id: backend.cluster_id,
                    ip,
                    port: u16::from_be(backend.port),
                };
                Some((active, *id))
            })
            .collect();
        let frontends: BTreeMap<ServiceKey, Programmed> = existing_services
            .into_iter()
            .map(|(key, info)| {
                (
                    key,
                    Programmed {
                        info,
                        backends: Vec::new(),
                        slice: None,
                    },
                )
            })
            .collect();
        let used_ids = frontends.values().map(|p| p.info.service_id).collect();
        Self {
            table_size,
            max_ids,
            frontends,
            used_ids,
            backend_ids,
            unused_backends: existing_backends.keys().copied().collect(),
            warned_full: false,
        }
    }

    /// Makes the datapath serve exactly `desired`.
    pub fn program(
        &mut self,
        desired: &BTreeMap<ServiceKey, Frontend>,
        maps: &mut DatapathMaps,
        metrics: &Metrics,
    ) {
        let gone: Vec<ServiceKey> = self
            .frontends
            .keys()
            .filter(|key| !desired.contains_key(*key))
            .copied()
            .collect();
        for key in gone {
            if let Err(error) = maps.remove_service(&key) {
                failed(metrics, "services", &error);
            }
            if let Some(removed) = self.frontends.remove(&key) {
                self.used_ids.remove(&removed.info.service_id);
            }
        }
        for (key, frontend) in desired {
            if let Err(error) = self.program_frontend(*key, frontend, maps) {
                failed(metrics, "services", &error);
            }
        }
        self.collect_backends(maps, metrics);
        metrics.services.set(self.frontends.len() as i64);
        metrics.service_backends.set(self.backend_ids.len() as i64);
    }

    fn program_frontend(
        &mut self,
        key: ServiceKey,
        frontend: &Frontend,
        maps: &mut DatapathMaps,
    ) -> Result<(), MapAccessError> {
        if let Some(current) = self.frontends.get(&key)
            && current.slice.is_some()
            && current.backends == frontend.backends
        {
            return Ok(());
        }
        let Some(id) = self
            .frontends
            .get(&key)
            .map(|p| p.info.service_id)
            .or_else(|| self.free_service_id())
        else {
            if !self.warned_full {
                self.warned_full = true;
                warn!(
                    "no free service id: services.max-services ({}) is reached; raise it",
                    self.max_ids
                );
            }
            return Ok(());
        };
        let mut ids = Vec::with_capacity(frontend.backends.len());
        for backend in &frontend.backends {
            ids.push(self.backend_id(backend, maps)?);
        }
        let names: Vec<String> = frontend.backends.iter().map(ActiveBackend::name).collect();
        let slice: Vec<u32> = maglev::table(&names, self.table_size)
            .into_iter()
            .map(|index| ids[index as usize])
            .collect();
        let previous = match self.frontends.get(&key).map(|p| &p.slice) {
            Some(Some(slice)) => Some(slice.clone()),
            // Adopted from a previous run: compare with what the map holds.
            Some(None) => maps.maglev(id, self.table_size).ok(),
            // A new id: every slot is written.
            None => None,
        };
        if !slice.is_empty() {
            maps.write_maglev(id, &slice, previous.as_deref())?;
        }
        let info = ServiceInfo {
            service_id: id,
            backend_count: u16::try_from(frontend.backends.len()).unwrap_or(u16::MAX),
            flags: 0,
        };
        if self.frontends.get(&key).map(|p| p.info) != Some(info) {
            maps.upsert_service(key, info)?;
        }
        let slice = if slice.is_empty() {
            previous
        } else {
            Some(slice)
        };
        self.used_ids.insert(id);
        self.frontends.insert(
            key,
            Programmed {
                info,
                backends: frontend.backends.clone(),
                slice: slice.or(Some(Vec::new())),
            },
        );
        Ok(())
    }

    fn free_service_id(&self) -> Option<u32> {
        // Past the highest id first (no scan while ids are dense, as when
        // thousands of services arrive), then the lowest gap.
        let next = self.used_ids.last().map_or(1, |last| last + 1);
        if next <= self.max_ids {
            return Some(next);
        }
        (1..=self.max_ids).find(|id| !self.used_ids.contains(id))
    }

    fn backend_id(
        &mut self,
        backend: &ActiveBackend,
        maps: &mut DatapathMaps,
    ) -> Result<u32, MapAccessError> {
        if let Some(id) = self.backend_ids.get(backend) {
            if self.unused_backends.remove(id) {
                maps.upsert_backend(*id, to_map(backend))?;
            }
            return Ok(*id);
        }
        let used: BTreeSet<u32> = self.backend_ids.values().copied().collect();
        let id = (1..u32::MAX)
            .find(|id| !used.contains(id))
            .expect("fewer than 4 billion backends");
        maps.upsert_backend(id, to_map(backend))?;
        self.backend_ids.insert(backend.clone(), id);
        Ok(id)
    }

    /// Removes backends no frontend uses any more.
    fn collect_backends(&mut self, maps: &mut DatapathMaps, metrics: &Metrics) {
        let used: BTreeSet<&ActiveBackend> =
            self.frontends.values().flat_map(|p| &p.backends).collect();
        let unused: Vec<ActiveBackend> = self
            .backend_ids
            .keys()
            .filter(|b| !used.contains(b))
            .cloned()
            .collect();
        for backend in unused {
            let id = self.backend_ids.remove(&backend).expect("listed above");
            if let Err(error) = maps.remove_backend(id) {
                failed(metrics, "backends", &error);
            }
        }
        self.unused_backends.clear();
    }
}

fn to_map(backend: &ActiveBackend) -> Backend {
    Backend {
        addr: IpKey::v4(backend.ip.octets()),
        port: backend.port.to_be(),
        cluster_id: backend.cluster_id,
    }
}

fn failed(metrics: &Metrics, map: &str, error: &MapAccessError) {
    error!("cannot update the {map} map: {error}");
    metrics
        .map_write_errors
        .get_or_create(&MapLabel { map: map.into() })
        .inc();
}
