//! The agent's services: this cluster's Services and EndpointSlices (the
//! catalog), merged with the backends other clusters export into the
//! frontends the service programmer writes.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;

use crate::{
    datapath::{DatapathMaps, programmers::services::ServiceProgrammer},
    mesh::state::MeshState,
    metrics::Metrics,
    services::{catalog::Catalog, merge},
    source::{Kind, state::SourceState},
};

pub(super) struct ServiceEngine {
    /// This cluster's services as last read from the source.
    catalog: Catalog,
    /// Annotation warnings already logged (service and message).
    warned: BTreeSet<String>,
    programmer: ServiceProgrammer,
    /// Service ids in the datapath, named `namespace/name` (for metrics).
    names: BTreeMap<u32, String>,
}

impl ServiceEngine {
    pub(super) fn new(programmer: ServiceProgrammer) -> Self {
        Self {
            catalog: Catalog::default(),
            warned: BTreeSet::new(),
            programmer,
            names: BTreeMap::new(),
        }
    }

    /// Reads this cluster's Services and EndpointSlices; warns once about
    /// each wrong annotation.
    pub(super) fn read(&mut self, source: &SourceState) {
        let objects = source
            .objects(Kind::Service)
            .chain(source.objects(Kind::EndpointSlice));
        self.catalog = Catalog::from_objects(objects);
        for (name, service) in &self.catalog.services {
            if let Some(warning) = &service.warning
                && self.warned.insert(format!("{name} {warning}"))
            {
                warn!(service = %name, "{warning}; the service is treated as not global");
            }
        }
    }

    /// Programs every frontend from the catalog and the mesh's backends.
    pub(super) fn program(
        &mut self,
        mesh: &MeshState,
        cluster_id: u16,
        maps: &mut DatapathMaps,
        metrics: &Metrics,
    ) {
        let desired = merge::frontends(&self.catalog, cluster_id, |name| {
            mesh.remote_backends(&name.namespace, &name.name)
        });
        self.programmer.program(&desired, maps, metrics);
        self.names = self
            .programmer
            .service_ids()
            .filter_map(|(key, id)| {
                let name = &desired.get(key)?.service;
                Some((id, format!("{}/{}", name.namespace, name.name)))
            })
            .collect();
    }

    /// The keys this node exports for ready backends of shared global
    /// services ([`merge::Placement`]); warns once about each backend no
    /// node may export.
    pub(super) fn exports(
        &mut self,
        cluster: &str,
        placement: &merge::Placement<'_>,
    ) -> BTreeMap<String, Vec<u8>> {
        let exports = merge::exports(&self.catalog, cluster, placement);
        for (service, ip) in exports.unexportable {
            if self.warned.insert(format!("{service} {ip} unexportable")) {
                warn!(
                    %service,
                    %ip,
                    "backend {ip} of global service {service} has no nodeName and is outside \
                     the cluster's pod CIDRs: other clusters would refuse it, so it serves only \
                     this cluster; give it a nodeName or an address in cluster.pod-cidrs"
                );
            }
        }
        exports.keys
    }

    /// Service ids in the datapath, by `namespace/name`.
    pub(super) fn names(&self) -> &BTreeMap<u32, String> {
        &self.names
    }

    /// Frontends and distinct backends in the datapath.
    pub(super) fn counts(&self) -> (usize, usize) {
        self.programmer.counts()
    }
}
