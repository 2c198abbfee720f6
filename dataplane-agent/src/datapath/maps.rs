//! Typed access to the datapath's maps. The agent changes maps entry by
//! entry; [`DatapathMaps::reconcile_ipcache`] and
//! [`DatapathMaps::reconcile_endpoints`] bring reused (pinned) maps to a
//! desired state by touching only the entries that differ.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, lpm_trie::Key},
};
use dataplane_common::{
    EndpointInfo, IpKey, IpcacheEntry, MetricsKey, MetricsValue, NodeConfig, maps as names,
};
use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum MapAccessError {
    #[error("the eBPF object has no map named {0}")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn at(map: &'static str) -> impl FnOnce(MapError) -> MapAccessError {
    move |source| MapAccessError::Map { map, source }
}

pub struct DatapathMaps {
    ipcache: LpmTrie<MapData, IpKey, IpcacheEntry>,
    endpoints: HashMap<MapData, IpKey, EndpointInfo>,
    metrics: PerCpuHashMap<MapData, MetricsKey, MetricsValue>,
    node_config: Array<MapData, NodeConfig>,
}

impl DatapathMaps {
    /// Takes the maps out of a freshly loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, MapAccessError> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(MapAccessError::Missing(name));
        Self::from_maps(
            take(names::IPCACHE)?,
            take(names::ENDPOINTS)?,
            take(names::METRICS)?,
            take(names::NODE_CONFIG)?,
        )
    }

    /// Opens the maps a running agent pinned under `dir` (for tests and
    /// inspection commands).
    pub fn open_pinned(dir: &Path) -> Result<Self, MapAccessError> {
        let open = |name: &'static str, wrap: fn(MapData) -> Map| {
            MapData::from_pin(dir.join(name))
                .map(wrap)
                .map_err(at(name))
        };
        Self::from_maps(
            open(names::IPCACHE, Map::LpmTrie)?,
            open(names::ENDPOINTS, Map::HashMap)?,
            open(names::METRICS, Map::PerCpuHashMap)?,
            open(names::NODE_CONFIG, Map::Array)?,
        )
    }

    fn from_maps(
        ipcache: Map,
        endpoints: Map,
        metrics: Map,
        node: Map,
    ) -> Result<Self, MapAccessError> {
        Ok(Self {
            ipcache: ipcache.try_into().map_err(at(names::IPCACHE))?,
            endpoints: endpoints.try_into().map_err(at(names::ENDPOINTS))?,
            metrics: metrics.try_into().map_err(at(names::METRICS))?,
            node_config: node.try_into().map_err(at(names::NODE_CONFIG))?,
        })
    }

    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<(), MapAccessError> {
        self.node_config
            .set(0, config, 0)
            .map_err(at(names::NODE_CONFIG))
    }

    pub fn node_config(&self) -> Result<NodeConfig, MapAccessError> {
        self.node_config.get(&0, 0).map_err(at(names::NODE_CONFIG))
    }

    pub fn upsert_ipcache(
        &mut self,
        cidr: Ipv4Net,
        entry: IpcacheEntry,
    ) -> Result<(), MapAccessError> {
        self.ipcache
            .insert(&ipcache_key(cidr), entry, 0)
            .map_err(at(names::IPCACHE))
    }

    pub fn remove_ipcache(&mut self, cidr: Ipv4Net) -> Result<(), MapAccessError> {
        self.ipcache
            .remove(&ipcache_key(cidr))
            .map_err(at(names::IPCACHE))
    }

    /// What the datapath finds for `ip`: the longest-prefix match, as the
    /// programs look it up (a pod's /32, else its node's pod CIDR, ...).
    pub fn ipcache_lookup(&self, ip: std::net::Ipv4Addr) -> Option<IpcacheEntry> {
        self.ipcache.get(&ipcache_key(Ipv4Net::from(ip)), 0).ok()
    }

    /// Every ipcache entry, by CIDR.
    pub fn ipcache(&self) -> Result<BTreeMap<Ipv4Net, IpcacheEntry>, MapAccessError> {
        let mut entries = BTreeMap::new();
        for item in self.ipcache.iter() {
            let (key, entry) = item.map_err(at(names::IPCACHE))?;
            if let Some(cidr) = cidr_of(&key) {
                entries.insert(cidr, entry);
            }
        }
        Ok(entries)
    }

    pub fn upsert_endpoint(
        &mut self,
        ip: [u8; 4],
        info: EndpointInfo,
    ) -> Result<(), MapAccessError> {
        self.endpoints
            .insert(IpKey::v4(ip), info, 0)
            .map_err(at(names::ENDPOINTS))
    }

    pub fn remove_endpoint(&mut self, ip: [u8; 4]) -> Result<(), MapAccessError> {
        self.endpoints
            .remove(&IpKey::v4(ip))
            .map_err(at(names::ENDPOINTS))
    }

    pub fn endpoints(&self) -> Result<BTreeMap<[u8; 4], EndpointInfo>, MapAccessError> {
        let mut entries = BTreeMap::new();
        for item in self.endpoints.iter() {
            let (key, info) = item.map_err(at(names::ENDPOINTS))?;
            if let Some(ip) = key.as_v4() {
                entries.insert(ip, info);
            }
        }
        Ok(entries)
    }

    /// Makes the ipcache equal `desired`, writing only what differs.
    pub fn reconcile_ipcache(
        &mut self,
        desired: &BTreeMap<Ipv4Net, IpcacheEntry>,
    ) -> Result<(), MapAccessError> {
        let current = self.ipcache()?;
        for cidr in current.keys().filter(|cidr| !desired.contains_key(cidr)) {
            self.remove_ipcache(*cidr)?;
        }
        for (cidr, entry) in desired {
            if current.get(cidr) != Some(entry) {
                self.upsert_ipcache(*cidr, *entry)?;
            }
        }
        Ok(())
    }

    /// Makes the endpoints map equal `desired`, writing only what differs.
    pub fn reconcile_endpoints(
        &mut self,
        desired: &BTreeMap<[u8; 4], EndpointInfo>,
    ) -> Result<(), MapAccessError> {
        let current = self.endpoints()?;
        for ip in current.keys().filter(|ip| !desired.contains_key(*ip)) {
            self.remove_endpoint(*ip)?;
        }
        for (ip, info) in desired {
            if current.get(ip) != Some(info) {
                self.upsert_endpoint(*ip, *info)?;
            }
        }
        Ok(())
    }

    /// Counters summed over CPUs.
    pub fn metrics(&self) -> Result<StdHashMap<MetricsKey, MetricsValue>, MapAccessError> {
        let mut totals = StdHashMap::new();
        for item in self.metrics.iter() {
            let (key, per_cpu) = item.map_err(at(names::METRICS))?;
            let total = per_cpu
                .iter()
                .fold(MetricsValue::default(), |sum, value| MetricsValue {
                    packets: sum.packets + value.packets,
                    bytes: sum.bytes + value.bytes,
                });
            totals.insert(key, total);
        }
        Ok(totals)
    }
}

fn ipcache_key(cidr: Ipv4Net) -> Key<IpKey> {
    Key::new(
        IpKey::PREFIX_BASE + u32::from(cidr.prefix_len()),
        IpKey::v4(cidr.network().octets()),
    )
}

fn cidr_of(key: &Key<IpKey>) -> Option<Ipv4Net> {
    let data = key.data();
    let address = data.as_v4()?;
    let prefix = key.prefix_len().checked_sub(IpKey::PREFIX_BASE)?;
    Ipv4Net::new(address.into(), u8::try_from(prefix).ok()?).ok()
}
