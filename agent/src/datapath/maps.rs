//! Typed access to the datapath's maps. The agent changes maps entry by
//! entry; [`DatapathMaps::reconcile_ipcache`] and
//! [`DatapathMaps::reconcile_endpoints`] bring reused (pinned) maps to a
//! desired state by touching only the entries that differ.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    os::fd::{AsFd, AsRawFd, RawFd},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        RingBuf, lpm_trie::Key,
    },
    sys::SyscallError,
};
use dataplane_common::{
    Backend, CtEntry, CtKey, EndpointInfo, FlowEvent, IpKey, IpcacheEntry, MetricsKey,
    MetricsValue, NodeConfig, PolicyKey, SelectionKey, ServiceInfo, ServiceKey, maps as names,
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

impl MapAccessError {
    /// True when the map had no room for a new entry (a hash map's E2BIG,
    /// an LPM trie's ENOSPC).
    pub fn is_full(&self) -> bool {
        let Self::Map {
            source: MapError::SyscallError(error),
            ..
        } = self
        else {
            return false;
        };
        matches!(
            error.io_error.raw_os_error(),
            Some(libc::E2BIG | libc::ENOSPC)
        )
    }
}

fn at(map: &'static str) -> impl FnOnce(MapError) -> MapAccessError {
    move |source| MapAccessError::Map { map, source }
}

/// `union bpf_attr` as BPF_MAP_UPDATE_BATCH reads it (aya has no batch
/// operations).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Sets `keys[i]` to `values[i]` in `map`, in one syscall (Linux 5.6+).
fn update_batch<K, V>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), MapError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).expect("a batch fits a u32"),
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` points at `count` keys and values of the map's key and
    // value sizes, which outlive the call; the kernel only reads them.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(MapError::SyscallError(SyscallError {
            call: "bpf_map_update_batch",
            io_error: std::io::Error::last_os_error(),
        }))
    }
}

pub struct DatapathMaps {
    /// The ipcache: exact addresses (/32s) in `ipcache_hosts`, every
    /// other prefix in the trie.
    ipcache: LpmTrie<MapData, IpKey, IpcacheEntry>,
    ipcache_hosts: HashMap<MapData, [u8; 4], IpcacheEntry>,
    endpoints: HashMap<MapData, [u8; 4], EndpointInfo>,
    node_config: Array<MapData, NodeConfig>,
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: HashMap<MapData, u32, Backend>,
    maglev: Array<MapData, u32>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    policy: LpmTrie<MapData, PolicyKey, u8>,
    events: RingBuf<MapData>,
    counters: CounterMaps,
}

/// The datapath's counters, readable apart from the other maps (the
/// metrics endpoint opens its own from the pins).
pub struct CounterMaps {
    flows: PerCpuHashMap<MapData, MetricsKey, MetricsValue>,
    selections: PerCpuHashMap<MapData, SelectionKey, u64>,
    events_lost: PerCpuArray<MapData, u64>,
}

/// The consumer end of the flow events ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl DatapathMaps {
    /// Takes the maps out of a freshly loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, MapAccessError> {
        let take = |name: &'static str| ebpf.take_map(name).ok_or(MapAccessError::Missing(name));
        Self::from_maps(all(names::ALL.map(take))?)
    }

    /// Opens the maps a running agent pinned under `dir` (for tests and
    /// inspection commands).
    pub fn open_pinned(dir: &Path) -> Result<Self, MapAccessError> {
        Self::from_maps(all(names::ALL.map(|name| open(dir, name)))?)
    }

    fn from_maps(maps: [Map; 13]) -> Result<Self, MapAccessError> {
        let [
            ipcache,
            ipcache_hosts,
            endpoints,
            metrics,
            node,
            services,
            backends,
            maglev,
            conntrack,
            policy,
            events,
            events_lost,
            selections,
        ] = maps;
        Ok(Self {
            ipcache: ipcache.try_into().map_err(at(names::IPCACHE))?,
            ipcache_hosts: ipcache_hosts.try_into().map_err(at(names::IPCACHE_HOSTS))?,
            endpoints: endpoints.try_into().map_err(at(names::ENDPOINTS))?,
            node_config: node.try_into().map_err(at(names::NODE_CONFIG))?,
            services: services.try_into().map_err(at(names::SERVICES))?,
            backends: backends.try_into().map_err(at(names::BACKENDS))?,
            maglev: maglev.try_into().map_err(at(names::MAGLEV))?,
            conntrack: conntrack_map(conntrack)?,
            policy: policy.try_into().map_err(at(names::POLICY))?,
            events: events.try_into().map_err(at(names::EVENTS))?,
            counters: CounterMaps::from_maps(metrics, selections, events_lost)?,
        })
    }

    /// The counters of this datapath.
    pub fn counters(&self) -> &CounterMaps {
        &self.counters
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
        if cidr.prefix_len() == 32 {
            self.ipcache_hosts
                .insert(cidr.addr().octets(), entry, 0)
                .map_err(at(names::IPCACHE_HOSTS))?;
            // A trie reused from a build that kept /32s there.
            let _ = self.ipcache.remove(&ipcache_key(cidr));
            return Ok(());
        }
        self.ipcache
            .insert(&ipcache_key(cidr), entry, 0)
            .map_err(at(names::IPCACHE))
    }

    pub fn remove_ipcache(&mut self, cidr: Ipv4Net) -> Result<(), MapAccessError> {
        if cidr.prefix_len() == 32 {
            let host = self
                .ipcache_hosts
                .remove(&cidr.addr().octets())
                .map_err(at(names::IPCACHE_HOSTS));
            let trie = self.ipcache.remove(&ipcache_key(cidr));
            return if trie.is_ok() { Ok(()) } else { host };
        }
        self.ipcache
            .remove(&ipcache_key(cidr))
            .map_err(at(names::IPCACHE))
    }

    /// What the datapath finds for `ip`, as the programs look it up: its
    /// exact entry (a pod's /32), else the longest-prefix match (its
    /// node's pod CIDR, ...).
    pub fn ipcache_lookup(&self, ip: std::net::Ipv4Addr) -> Option<IpcacheEntry> {
        self.ipcache_hosts
            .get(&ip.octets(), 0)
            .ok()
            .or_else(|| self.ipcache.get(&ipcache_key(Ipv4Net::from(ip)), 0).ok())
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
        for item in self.ipcache_hosts.iter() {
            let (ip, entry) = item.map_err(at(names::IPCACHE_HOSTS))?;
            entries.insert(Ipv4Net::from(std::net::Ipv4Addr::from(ip)), entry);
        }
        Ok(entries)
    }

    pub fn upsert_endpoint(
        &mut self,
        ip: [u8; 4],
        info: EndpointInfo,
    ) -> Result<(), MapAccessError> {
        self.endpoints
            .insert(ip, info, 0)
            .map_err(at(names::ENDPOINTS))
    }

    pub fn remove_endpoint(&mut self, ip: [u8; 4]) -> Result<(), MapAccessError> {
        self.endpoints.remove(&ip).map_err(at(names::ENDPOINTS))
    }

    pub fn endpoints(&self) -> Result<BTreeMap<[u8; 4], EndpointInfo>, MapAccessError> {
        let mut entries = BTreeMap::new();
        for item in self.endpoints.iter() {
            let (ip, info) = item.map_err(at(names::ENDPOINTS))?;
            entries.insert(ip, info);
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

    pub fn upsert_service(
        &mut self,
        key: ServiceKey,
        info: ServiceInfo,
    ) -> Result<(), MapAccessError> {
        self.services
            .insert(key, info, 0)
            .map_err(at(names::SERVICES))
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapAccessError> {
        self.services.remove(key).map_err(at(names::SERVICES))
    }

    pub fn services(&self) -> Result<BTreeMap<ServiceKey, ServiceInfo>, MapAccessError> {
        self.services
            .iter()
            .map(|item| item.map_err(at(names::SERVICES)))
            .collect()
    }

    pub fn upsert_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapAccessError> {
        self.backends
            .insert(id, backend, 0)
            .map_err(at(names::BACKENDS))
    }

    pub fn remove_backend(&mut self, id: u32) -> Result<(), MapAccessError> {
        self.backends.remove(&id).map_err(at(names::BACKENDS))
    }

    pub fn backends(&self) -> Result<BTreeMap<u32, Backend>, MapAccessError> {
        self.backends
            .iter()
            .map(|item| item.map_err(at(names::BACKENDS)))
            .collect()
    }

    /// Writes the Maglev slice of `service_id`: `slots` backend ids (the
    /// slice's length is the table size), each written only when it differs
    /// from `previous` (the slice as last written), so a one-backend change
    /// writes about 1/N of the slots.
    pub fn write_maglev(
        &mut self,
        service_id: u32,
        slots: &[u32],
        previous: Option<&[u32]>,
    ) -> Result<usize, MapAccessError> {
        let base = service_id * slots.len() as u32;
        let (indices, values): (Vec<u32>, Vec<u32>) = slots
            .iter()
            .enumerate()
            .filter(|(slot, backend)| {
                previous.is_none_or(|previous| previous.get(*slot) != Some(*backend))
            })
            .map(|(slot, backend)| (base + slot as u32, *backend))
            .unzip();
        // One syscall for the whole slice, not one per slot: installing
        // 10,000 services of 1,021 slots is otherwise 10 million syscalls.
        update_batch(IterableMap::map(&self.maglev), &indices, &values)
            .map_err(at(names::MAGLEV))?;
        Ok(indices.len())
    }

    /// The Maglev slice of `service_id` in a table of `table_size` slots.
    pub fn maglev(&self, service_id: u32, table_size: u32) -> Result<Vec<u32>, MapAccessError> {
        let base = service_id * table_size;
        (base..base + table_size)
            .map(|index| self.maglev.get(&index, 0).map_err(at(names::MAGLEV)))
            .collect()
    }

    /// Every conntrack entry (for tests and inspection).
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>, MapAccessError> {
        self.conntrack
            .iter()
            .map(|item| item.map_err(at(names::CONNTRACK)))
            .collect()
    }

    /// Drops one conntrack entry, as a full LRU table evicting it would.
    pub fn remove_conntrack(&mut self, key: &CtKey) -> Result<(), MapAccessError> {
        self.conntrack.remove(key).map_err(at(names::CONNTRACK))
    }

    /// Allows what `key` covers: its first `prefix_bits` bits (see
    /// [`PolicyKey`]).
    pub fn upsert_policy(
        &mut self,
        key: PolicyKey,
        prefix_bits: u32,
    ) -> Result<(), MapAccessError> {
        self.policy
            .insert(
                &Key::new(prefix_bits, key),
                dataplane_common::policy::POLICY_ALLOW,
                0,
            )
            .map_err(at(names::POLICY))
    }

    pub fn remove_policy(
        &mut self,
        key: PolicyKey,
        prefix_bits: u32,
    ) -> Result<(), MapAccessError> {
        self.policy
            .remove(&Key::new(prefix_bits, key))
            .map_err(at(names::POLICY))
    }

    /// Every policy entry, as (key, prefix bits).
    pub fn policy(&self) -> Result<Vec<(PolicyKey, u32)>, MapAccessError> {
        self.policy
            .keys()
            .map(|key| {
                key.map(|key| (key.data(), key.prefix_len()))
                    .map_err(at(names::POLICY))
            })
            .collect()
    }

    /// Flow events the datapath sent since the last call.
    pub fn drain_events(&mut self) -> Vec<FlowEvent> {
        drain(&mut self.events, usize::MAX)
    }

    /// Packet and byte counters, summed over CPUs.
    pub fn metrics(&self) -> Result<StdHashMap<MetricsKey, MetricsValue>, MapAccessError> {
        self.counters.flows()
    }
}

impl CounterMaps {
    /// Opens the counters a running agent pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self, MapAccessError> {
        Self::from_maps(
            open(dir, names::METRICS)?,
            open(dir, names::SELECTIONS)?,
            open(dir, names::EVENTS_LOST)?,
        )
    }

    fn from_maps(flows: Map, selections: Map, events_lost: Map) -> Result<Self, MapAccessError> {
        Ok(Self {
            flows: flows.try_into().map_err(at(names::METRICS))?,
            selections: selections.try_into().map_err(at(names::SELECTIONS))?,
            events_lost: events_lost.try_into().map_err(at(names::EVENTS_LOST))?,
        })
    }

    /// Packets and bytes by outcome, direction, protocol and clusters,
    /// summed over CPUs.
    pub fn flows(&self) -> Result<StdHashMap<MetricsKey, MetricsValue>, MapAccessError> {
        let mut totals = StdHashMap::new();
        for item in self.flows.iter() {
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

    /// New connections per (service id, backend cluster), summed over CPUs.
    pub fn selections(&self) -> Result<StdHashMap<SelectionKey, u64>, MapAccessError> {
        let mut totals = StdHashMap::new();
        for item in self.selections.iter() {
            let (key, per_cpu) = item.map_err(at(names::SELECTIONS))?;
            totals.insert(key, per_cpu.iter().sum());
        }
        Ok(totals)
    }

    /// Events the ring buffer had no room for.
    pub fn events_lost(&self) -> Result<u64, MapAccessError> {
        let per_cpu = self
            .events_lost
            .get(&0, 0)
            .map_err(at(names::EVENTS_LOST))?;
        Ok(per_cpu.iter().sum())
    }
}

impl EventReader {
    /// Opens the ring buffer a running agent pinned under `dir`. There
    /// must be one reader: items read here are gone for others.
    pub fn open_pinned(dir: &Path) -> Result<Self, MapAccessError> {
        let ring = open(dir, names::EVENTS)?;
        Ok(Self {
            ring: ring.try_into().map_err(at(names::EVENTS))?,
        })
    }

    /// Up to `max` events, oldest first.
    pub fn drain(&mut self, max: usize) -> Vec<FlowEvent> {
        drain(&mut self.ring, max)
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

fn drain(ring: &mut RingBuf<MapData>, max: usize) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    while events.len() < max
        && let Some(item) = ring.next()
    {
        if item.len() == size_of::<FlowEvent>() {
            // SAFETY: FlowEvent is plain data of exactly this size.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
        }
    }
    events
}

/// What a conntrack sweep left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Entries left.
    pub live: usize,
    /// Load-balanced connections not closing, by their backend's cluster
    /// id: what `fleetnet cluster retire` waits on to drain.
    pub balanced_to: BTreeMap<u16, u64>,
}

/// Deletes the entries of the conntrack map pinned under `dir` expired at
/// `now` (CLOCK_MONOTONIC in ns, the datapath's clock) and counts what is
/// left. The datapath ignores expired entries,
/// but an LRU map only drops them when it is full: without this sweep a
/// map that once filled up would stay full of dead connections (Cilium's
/// conntrack GC does the same).
pub fn sweep_conntrack(dir: &Path, now: u64) -> Result<Swept, MapAccessError> {
    // One handle walks, the other deletes.
    let walk = open_conntrack(dir)?;
    let mut delete = open_conntrack(dir)?;
    let mut swept = Swept::default();
    // An expired entry goes once the walk has moved past it: deleting the
    // key the walk stands on would restart it. Deleting as it goes keeps
    // memory flat, however full the table.
    let mut behind: Option<CtKey> = None;
    for (key, entry) in walk.iter().filter_map(Result::ok) {
        if let Some(expired) = behind.take() {
            swept.live += remove_if_expired(&mut delete, &expired, now);
        }
        if entry.expires < now {
            behind = Some(key);
            continue;
        }
        swept.live += 1;
        if key.direction == CtKey::ORIGINAL
            && entry.flags & CtEntry::NAT != 0
            && entry.state != CtEntry::CLOSING
        {
            *swept.balanced_to.entry(entry.cluster_id).or_default() += 1;
        }
    }
    if let Some(expired) = behind {
        swept.live += remove_if_expired(&mut delete, &expired, now);
    }
    Ok(swept)
}

/// The conntrack map pinned under `dir`.
fn open_conntrack(dir: &Path) -> Result<HashMap<MapData, CtKey, CtEntry>, MapAccessError> {
    conntrack_map(open(dir, names::CONNTRACK)?)
}

/// The conntrack map, typed. An LRU hash reads, writes and iterates like
/// a hash; the typed wrapper is the same.
fn conntrack_map(map: Map) -> Result<HashMap<MapData, CtKey, CtEntry>, MapAccessError> {
    let map = match map {
        Map::LruHashMap(data) => Map::HashMap(data),
        other => other,
    };
    map.try_into().map_err(at(names::CONNTRACK))
}

/// Deletes `key` if it is still expired: a connection may have reused the
/// tuple since the walk read it (the datapath makes again an entry lost
/// in what race remains). Returns 1 if it lives on.
fn remove_if_expired(map: &mut HashMap<MapData, CtKey, CtEntry>, key: &CtKey, now: u64) -> usize {
    match map.get(key, 0) {
        Ok(entry) if entry.expires < now => {
            let _ = map.remove(key);
            0
        }
        Ok(_) => 1,
        Err(_) => 0,
    }
}

/// The map `name` pinned under `dir`.
fn open(dir: &Path, name: &'static str) -> Result<Map, MapAccessError> {
    MapData::from_pin(dir.join(name))
        .and_then(Map::from_map_data)
        .map_err(at(name))
}

/// Every map, or the first error.
fn all<const N: usize>(maps: [Result<Map, MapAccessError>; N]) -> Result<[Map; N], MapAccessError> {
    let maps: Vec<Map> = maps.into_iter().collect::<Result<_, _>>()?;
    Ok(maps
        .try_into()
        .unwrap_or_else(|_| unreachable!("as many maps as names")))
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
