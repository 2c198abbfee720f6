//! This cluster's services as its source describes them: frontends from
//! Service objects (ClusterIP, IPv4, TCP and UDP ports) and backends from
//! EndpointSlices (only ready, non-terminating endpoints, as kube-proxy and
//! Cilium use them).

use std::{collections::BTreeMap, net::Ipv4Addr};

use dataplane_common::service::{PROTO_TCP, PROTO_UDP};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    services::annotations::{self, Global},
    source::Object,
};

/// Names a service port across clusters: its name when it has one, else
/// its number, with the protocol (`http.tcp`, `53.udp`).
pub fn port_id(name: &str, port: u16, protocol: u8) -> String {
    let protocol = if protocol == PROTO_UDP { "udp" } else { "tcp" };
    if name.is_empty() {
        format!("{port}.{protocol}")
    } else {
        format!("{name}.{protocol}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name ("" for a service's only, unnamed port).
    pub name: String,
    pub port: u16,
    pub protocol: u8,
}

impl Port {
    /// Its name across clusters, see [`port_id`].
    pub fn id(&self) -> String {
        port_id(&self.name, self.port, self.protocol)
    }

    /// True for a backend of this port (same slice port name and protocol).
    pub fn serves(&self, backend: &LocalBackend) -> bool {
        backend.port_name == self.name && backend.protocol == self.protocol
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalService {
    pub vip: Ipv4Addr,
    pub ports: Vec<Port>,
    /// `None`: not global (or its annotations are wrong, see `warning`).
    pub global: Option<Global>,
    pub warning: Option<String>,
}

/// A ready endpoint for one service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalBackend {
    /// The slice port's name, which is its service port's name.
    pub port_name: String,
    pub protocol: u8,
    pub ip: Ipv4Addr,
    pub target_port: u16,
    /// The node the endpoint runs on, when the slice says.
    pub node: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub services: BTreeMap<ServiceName, LocalService>,
    pub backends: BTreeMap<ServiceName, Vec<LocalBackend>>,
}

impl Catalog {
    /// The catalog of the Services and EndpointSlices among `objects`.
    pub fn from_objects<'a>(objects: impl Iterator<Item = &'a Object> + Clone) -> Self {
        let services = objects.clone().filter_map(|object| match object {
            Object::Service(service) => Some(service.as_ref()),
            _ => None,
        });
        let slices = objects.filter_map(|object| match object {
            Object::EndpointSlice(slice) => Some(slice.as_ref()),
            _ => None,
        });
        Self::build(services, slices)
    }

    pub fn build<'a>(
        services: impl Iterator<Item = &'a Service>,
        slices: impl Iterator<Item = &'a EndpointSlice>,
    ) -> Self {
        let mut catalog = Catalog::default();
        for service in services {
            let (Some(namespace), Some(name)) =
                (&service.metadata.namespace, &service.metadata.name)
            else {
                continue;
            };
            let name = ServiceName {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            if let Some(local) = local_service(service) {
                catalog.services.insert(name, local);
            }
        }
        for slice in slices {
            let labels = slice.metadata.labels.as_ref();
            let (Some(namespace), Some(service)) = (
                &slice.metadata.namespace,
                labels.and_then(|labels| labels.get("kubernetes.io/service-name")),
            ) else {
                continue;
            };
            if slice.address_type != "IPv4" {
                continue;
            }
            let name = ServiceName {
                namespace: namespace.clone(),
                name: service.clone(),
            };
            let backends = catalog.backends.entry(name).or_default();
            for endpoint in &slice.endpoints {
                let conditions = endpoint.conditions.as_ref();
                // An unset ready condition means ready (the API's rule).
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                if !ready || terminating {
                    continue;
                }
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    for port in slice.ports.iter().flatten() {
                        let (Some(number), Some(protocol)) =
                            (port.port, protocol_number(port.protocol.as_deref()))
                        else {
                            continue;
                        };
                        backends.push(LocalBackend {
                            port_name: port.name.clone().unwrap_or_default(),
                            protocol,
                            ip,
                            target_port: u16::try_from(number).unwrap_or(0),
                            node: endpoint.node_name.clone(),
                        });
                    }
                }
            }
            backends.sort();
            backends.dedup();
        }
        catalog
    }
}

fn local_service(service: &Service) -> Option<LocalService> {
    let spec = service.spec.as_ref()?;
    let vip: Ipv4Addr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let ports: Vec<Port> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            let protocol = protocol_number(port.protocol.as_deref())?;
            let number = u16::try_from(port.port).ok()?;
            Some(Port {
                name: port.name.clone().unwrap_or_default(),
                port: number,
                protocol,
            })
        })
        .collect();
    let (global, warning) = match annotations::global(service.metadata.annotations.as_ref()) {
        Ok(global) => (global, None),
        Err(warning) => (None, Some(warning)),
    };
    Some(LocalService {
        vip,
        ports,
        global,
        warning,
    })
}

fn protocol_number(protocol: Option<&str>) -> Option<u8> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::parse_documents;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop, annotations: { service.cilium.io/global: "true" } }
spec: { clusterIP: 172.20.0.10, ports: [ { name: http, port: 80, targetPort: 8080 }, { name: dns, port: 53, protocol: UDP } ] }
---
apiVersion: v1
kind: Service
metadata: { name: plain, namespace: shop }
spec: { clusterIP: 172.20.0.11, ports: [ { port: 443 } ] }
---
apiVersion: v1
kind: Service
metadata: { name: headless, namespace: shop }
spec: { clusterIP: None, ports: [ { port: 80 } ] }
---
apiVersion: v1
kind: Service
metadata: { name: typo, namespace: shop, annotations: { service.cilium.io/global: "ture" } }
spec: { clusterIP: 172.20.0.12, ports: [ { port: 80 } ] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-abc, namespace: shop, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [ { name: http, port: 8080, protocol: TCP }, { name: dns, port: 5353, protocol: UDP } ]
endpoints:
  - { addresses: [10.1.1.11], conditions: { ready: true }, nodeName: n1 }
  - { addresses: [10.1.1.12], conditions: { ready: false }, nodeName: n1 }
  - { addresses: [10.1.2.11], conditions: { ready: true, terminating: true }, nodeName: n2 }
  - { addresses: [10.1.2.12], nodeName: n2 }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: plain-1, namespace: shop, labels: { kubernetes.io/service-name: plain } }
addressType: IPv4
ports: [ { port: 8443 } ]
endpoints: [ { addresses: [10.1.1.20] } ]
"#;

    fn catalog() -> Catalog {
        Catalog::from_objects(parse_documents(MANIFESTS).unwrap().iter())
    }

    fn name(name: &str) -> ServiceName {
        ServiceName {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn frontends_come_from_cluster_ips_and_their_tcp_and_udp_ports() {
        let catalog = catalog();
        let web = &catalog.services[&name("web")];
        assert_eq!(web.vip, Ipv4Addr::new(172, 20, 0, 10));
        let ids: Vec<String> = web.ports.iter().map(Port::id).collect();
        assert_eq!(ids, ["http.tcp", "dns.udp"]);
        assert!(web.global.is_some());
        assert_eq!(catalog.services[&name("plain")].ports[0].id(), "443.tcp");
        assert!(
            !catalog.services.contains_key(&name("headless")),
            "no VIP, no frontend"
        );
        let typo = &catalog.services[&name("typo")];
        assert!(typo.global.is_none());
        assert!(typo.warning.as_deref().unwrap().contains("\"ture\""));
    }

    #[test]
    fn only_ready_non_terminating_endpoints_are_backends() {
        let catalog = catalog();
        let backends = &catalog.backends[&name("web")];
        let mut ips: Vec<String> = backends
            .iter()
            .map(|b| format!("{}:{}/{}", b.ip, b.target_port, b.port_name))
            .collect();
        ips.sort();
        // 10.1.1.12 is not ready, 10.1.2.11 is terminating; an unset
        // condition counts as ready.
        assert_eq!(
            ips,
            [
                "10.1.1.11:5353/dns",
                "10.1.1.11:8080/http",
                "10.1.2.12:5353/dns",
                "10.1.2.12:8080/http"
            ]
        );
        let web = &catalog.services[&name("web")];
        assert_eq!(
            backends.iter().filter(|b| web.ports[0].serves(b)).count(),
            2
        );
        let plain = &catalog.services[&name("plain")];
        assert!(
            plain.ports[0].serves(&catalog.backends[&name("plain")][0]),
            "unnamed ports match each other"
        );
    }
}
