//! The datapath's counters as Prometheus metrics, read from the BPF maps on
//! each scrape (per-CPU values summed): forwarded and dropped packets and
//! bytes, policy denials, load-balancing selections, lost flow events.
//! Cluster and service ids are named with what the agent last knew.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, RwLock},
};

use dataplane_common::{Direction, DropReason, MetricsKey, MetricsValue, SelectionKey, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family},
};

use crate::{
    api::status::Traffic,
    datapath::{CounterMaps, MapAccessError},
};

/// Names for the numbers the datapath counts with.
#[derive(Debug, Default)]
pub struct Names {
    pub clusters: BTreeMap<u16, String>,
    /// Service id to `namespace/name`.
    pub services: BTreeMap<u32, String>,
}

impl Names {
    /// A cluster's name; `none` for 0 (outside the mesh), the number when
    /// unknown.
    pub fn cluster(&self, id: u16) -> String {
        match id {
            0 => "none".into(),
            id => self
                .clusters
                .get(&id)
                .cloned()
                .unwrap_or_else(|| id.to_string()),
        }
    }

    fn service(&self, id: u32) -> String {
        self.services
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("id-{id}"))
    }
}

/// The counters summed by pair of clusters: forwarded packets where they
/// left their pod (egress), so that each is counted once fleet-wide, and
/// drops wherever they happened, by reason.
pub fn traffic(flows: &HashMap<MetricsKey, MetricsValue>, names: &Names) -> Vec<Traffic> {
    let mut pairs: BTreeMap<(u16, u16), Traffic> = BTreeMap::new();
    for (key, value) in flows {
        let pair = pairs
            .entry((key.src_cluster, key.dst_cluster))
            .or_insert_with(|| Traffic {
                source_cluster: names.cluster(key.src_cluster),
                destination_cluster: names.cluster(key.dst_cluster),
                ..Traffic::default()
            });
        if Verdict::from_code(key.reason).is_some() {
            if Direction::from_code(key.direction) == Some(Direction::Egress) {
                pair.forwarded_packets += value.packets;
            }
        } else if let Some(reason) = DropReason::from_code(key.reason) {
            *pair
                .dropped_packets
                .entry(reason.label().to_string())
                .or_default() += value.packets;
        }
    }
    pairs
        .into_values()
        .filter(|pair| pair.forwarded_packets > 0 || !pair.dropped_packets.is_empty())
        .collect()
}

/// The counters at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub flows: HashMap<MetricsKey, MetricsValue>,
    pub selections: HashMap<SelectionKey, u64>,
    pub events_lost: u64,
}

/// Where snapshots come from: the pinned maps, or (in tests) fixed data.
pub trait CounterSource: Send + Sync {
    fn read(&self) -> Result<Snapshot, MapAccessError>;
}

impl CounterSource for Mutex<CounterMaps> {
    fn read(&self) -> Result<Snapshot, MapAccessError> {
        let counters = self.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(Snapshot {
            flows: counters.flows()?,
            selections: counters.selections()?,
            events_lost: counters.events_lost()?,
        })
    }
}

impl CounterSource for Snapshot {
    fn read(&self) -> Result<Snapshot, MapAccessError> {
        Ok(self.clone())
    }
}

pub struct DatapathCollector {
    source: Box<dyn CounterSource>,
    pub names: Arc<RwLock<Names>>,
    /// Events the agent read but dropped over its rate limit.
    rate_limited: Counter,
}

impl fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatapathCollector")
    }
}

impl DatapathCollector {
    pub fn new(source: Box<dyn CounterSource>, rate_limited: Counter) -> Self {
        Self {
            source,
            names: Arc::default(),
            rate_limited,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    direction: String,
    verdict: String,
    protocol: String,
    source_cluster: String,
    destination_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    direction: String,
    reason: String,
    protocol: String,
    source_cluster: String,
    destination_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SelectionLabels {
    service: String,
    backend_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

/// The protocol label: lowercase name, or the number; `other` for frames
/// that are not IPv4.
pub fn protocol_label(protocol: u8) -> String {
    match protocol {
        0 => "other".into(),
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // A map that cannot be read is left out of this scrape.
        let Ok(snapshot) = self.source.read() else {
            return Ok(());
        };
        let names = self
            .names
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        snapshot.encode(&names, self.rate_limited.get(), encoder)
    }
}

impl Snapshot {
    fn encode(
        &self,
        names: &Names,
        rate_limited: u64,
        mut encoder: DescriptorEncoder,
    ) -> Result<(), fmt::Error> {
        let forwarded_packets = Family::<ForwardLabels, Counter>::default();
        let forwarded_bytes = Family::<ForwardLabels, Counter>::default();
        let drop_packets = Family::<DropLabels, Counter>::default();
        let drop_bytes = Family::<DropLabels, Counter>::default();
        let denials = Family::<DirectionLabel, Counter>::default();
        for (key, value) in &self.flows {
            let direction = Direction::from_code(key.direction)
                .map_or("unknown", Direction::label)
                .to_string();
            let protocol = protocol_label(key.protocol);
            let (source_cluster, destination_cluster) = (
                names.cluster(key.src_cluster),
                names.cluster(key.dst_cluster),
            );
            if let Some(verdict) = Verdict::from_code(key.reason) {
                let labels = ForwardLabels {
                    direction,
                    verdict: verdict.label().into(),
                    protocol,
                    source_cluster,
                    destination_cluster,
                };
                forwarded_packets
                    .get_or_create(&labels)
                    .inc_by(value.packets);
                forwarded_bytes.get_or_create(&labels).inc_by(value.bytes);
            } else if let Some(reason) = DropReason::from_code(key.reason) {
                // The policy's direction, not the packet's: a pod denied
                // by a neighbour's ingress policy is dropped as it leaves.
                let policy = match reason {
                    DropReason::PolicyDeniedIngress => Some(Direction::Ingress),
                    DropReason::PolicyDeniedEgress => Some(Direction::Egress),
                    _ => None,
                };
                if let Some(policy) = policy {
                    let label = DirectionLabel {
                        direction: policy.label().into(),
                    };
                    denials.get_or_create(&label).inc_by(value.packets);
                }
                let labels = DropLabels {
                    direction,
                    reason: reason.label().into(),
                    protocol,
                    source_cluster,
                    destination_cluster,
                };
                drop_packets.get_or_create(&labels).inc_by(value.packets);
                drop_bytes.get_or_create(&labels).inc_by(value.bytes);
            }
        }
        let selections = Family::<SelectionLabels, Counter>::default();
        for (key, count) in &self.selections {
            let labels = SelectionLabels {
                service: names.service(key.service_id),
                backend_cluster: names.cluster(key.cluster_id),
            };
            selections.get_or_create(&labels).inc_by(*count);
        }
        let lost = Family::<StageLabel, Counter>::default();
        lost.get_or_create(&StageLabel {
            stage: "ring".into(),
        })
        .inc_by(self.events_lost);
        lost.get_or_create(&StageLabel {
            stage: "agent".into(),
        })
        .inc_by(rate_limited);

        let metrics: [(&str, &str, &dyn EncodeMetric); 7] = [
            (
                "forwarded_packets",
                "Packets forwarded, by direction, verdict, protocol and clusters",
                &forwarded_packets,
            ),
            (
                "forwarded_bytes",
                "Bytes forwarded, by direction, verdict, protocol and clusters",
                &forwarded_bytes,
            ),
            (
                "drop_packets",
                "Packets dropped, by direction, reason, protocol and clusters",
                &drop_packets,
            ),
            (
                "drop_bytes",
                "Bytes dropped, by direction, reason, protocol and clusters",
                &drop_bytes,
            ),
            (
                "policy_denials",
                "Packets denied by network policy, by direction",
                &denials,
            ),
            (
                "service_selections",
                "New connections load-balanced to a backend, by service and backend cluster",
                &selections,
            ),
            (
                "flow_events_lost",
                "Flow events lost: ring buffer full (ring), or over observe.events-per-second (agent)",
                &lost,
            ),
        ];
        for (name, help, metric) in metrics {
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(metric_encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// One counter of each kind: a tunnelled UDP flow, a policy drop, a
    /// selection, lost events.
    pub(crate) fn snapshot() -> Snapshot {
        let key = |reason: u8, direction: Direction, protocol| MetricsKey {
            reason,
            direction: direction as u8,
            protocol,
            _pad: 0,
            src_cluster: 1,
            dst_cluster: 2,
        };
        Snapshot {
            flows: HashMap::from([
                (
                    key(Verdict::Tunnelled as u8, Direction::Egress, 17),
                    MetricsValue {
                        packets: 5,
                        bytes: 500,
                    },
                ),
                (
                    key(DropReason::PolicyDeniedIngress as u8, Direction::Ingress, 6),
                    MetricsValue {
                        packets: 2,
                        bytes: 120,
                    },
                ),
                // Denied by a local neighbour's ingress policy as it left.
                (
                    key(DropReason::PolicyDeniedIngress as u8, Direction::Egress, 6),
                    MetricsValue {
                        packets: 1,
                        bytes: 60,
                    },
                ),
            ]),
            selections: HashMap::from([(
                SelectionKey {
                    service_id: 3,
                    cluster_id: 2,
                    _pad: [0; 2],
                },
                7,
            )]),
            events_lost: 4,
        }
    }

    #[test]
    fn traffic_sums_forwards_where_they_leave_and_drops_by_reason() {
        let mut snapshot = snapshot();
        // The same packets as they arrive at the other cluster's node.
        snapshot.flows.insert(
            MetricsKey {
                reason: Verdict::DeliveredLocal as u8,
                direction: Direction::Ingress as u8,
                protocol: 17,
                _pad: 0,
                src_cluster: 1,
                dst_cluster: 2,
            },
            MetricsValue {
                packets: 5,
                bytes: 500,
            },
        );
        let names = Names {
            clusters: BTreeMap::from([(1, "c1".into()), (2, "c2".into())]),
            ..Names::default()
        };
        assert_eq!(
            traffic(&snapshot.flows, &names),
            [Traffic {
                source_cluster: "c1".into(),
                destination_cluster: "c2".into(),
                forwarded_packets: 5,
                dropped_packets: BTreeMap::from([("policy_denied_ingress".into(), 3)]),
            }]
        );
    }

    #[test]
    fn counters_are_named_and_labelled() {
        let metrics = Metrics::default();
        metrics.events_rate_limited.inc_by(9);
        let collector =
            DatapathCollector::new(Box::new(snapshot()), metrics.events_rate_limited.clone());
        {
            let mut names = collector.names.write().unwrap();
            names.clusters = BTreeMap::from([(1, "c1".into()), (2, "c2".into())]);
            names.services = BTreeMap::from([(3, "shop/web".into())]);
        }
        let _ = metrics.datapath.set(Arc::new(collector));
        let text = metrics.render();
        for line in [
            r#"fleetnet_forwarded_packets_total{direction="egress",verdict="tunnelled",protocol="udp",source_cluster="c1",destination_cluster="c2"} 5"#,
            r#"fleetnet_forwarded_bytes_total{direction="egress",verdict="tunnelled",protocol="udp",source_cluster="c1",destination_cluster="c2"} 500"#,
            r#"fleetnet_drop_packets_total{direction="ingress",reason="policy_denied_ingress",protocol="tcp",source_cluster="c1",destination_cluster="c2"} 2"#,
            r#"fleetnet_policy_denials_total{direction="ingress"} 3"#,
            r#"fleetnet_service_selections_total{service="shop/web",backend_cluster="c2"} 7"#,
            r#"fleetnet_flow_events_lost_total{stage="ring"} 4"#,
            r#"fleetnet_flow_events_lost_total{stage="agent"} 9"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
        assert!(
            !text.contains(r#"fleetnet_policy_denials_total{direction="egress"}"#),
            "no egress policy denied anything: {text}"
        );
    }
}
