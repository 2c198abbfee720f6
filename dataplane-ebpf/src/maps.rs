//! Map definitions and typed lookups. Sizes here are defaults; the agent
//! sets the real ones from its configuration at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use dataplane_common::{
    Backend, CtEntry, CtKey, EndpointInfo, IpKey, IpcacheEntry, MetricsKey, MetricsValue,
    NodeConfig, PolicyKey, SelectionKey, ServiceInfo, ServiceKey, maps as limits,
};

#[map(name = "IPCACHE")]
static IPCACHE: LpmTrie<IpKey, IpcacheEntry> =
    LpmTrie::with_max_entries(limits::IPCACHE_MAX_ENTRIES, 0);

/// The ipcache's exact IPv4 addresses: most lookups are of a pod's
/// address, found here in one hash lookup instead of a walk down a trie
/// that holds every node's CIDR besides. Keyed by the bare address
/// (network order): a 4-byte key hashes and compares faster than a
/// 20-byte `IpKey`. Not preallocated, as the trie is not.
#[map(name = "IPCACHE_HOSTS")]
static IPCACHE_HOSTS: HashMap<[u8; 4], IpcacheEntry> =
    HashMap::with_max_entries(limits::IPCACHE_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// This node's pods by IPv4 address (network order; a 4-byte key, as
/// `IPCACHE_HOSTS`).
#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<[u8; 4], EndpointInfo> =
    HashMap::with_max_entries(limits::ENDPOINTS_MAX_ENTRIES, 0);

#[map(name = "METRICS")]
pub static METRICS: PerCpuHashMap<MetricsKey, MetricsValue> =
    PerCpuHashMap::with_max_entries(limits::METRICS_MAX_ENTRIES, 0);

#[map(name = "NODE_CONFIG")]
static NODE_CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceInfo> =
    HashMap::with_max_entries(limits::SERVICES_MAX_ENTRIES, 0);

#[map(name = "BACKENDS")]
static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(limits::BACKENDS_MAX_ENTRIES, 0);

/// One slice of `maglev_table_size` backend ids per service id (the agent
/// sizes the map at load time).
#[map(name = "MAGLEV")]
static MAGLEV: Array<u32> =
    Array::with_max_entries((limits::MAX_SERVICE_IDS + 1) * limits::MAGLEV_TABLE_SIZE, 0);

#[map(name = "POLICY")]
static POLICY: LpmTrie<PolicyKey, u8> = LpmTrie::with_max_entries(limits::POLICY_MAX_ENTRIES, 0);

/// Flow events for the agent: every drop, sampled forwards.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

#[map(name = "EVENTS_LOST")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SELECTIONS")]
pub static SELECTIONS: PerCpuHashMap<SelectionKey, u64> =
    PerCpuHashMap::with_max_entries(limits::SELECTIONS_MAX_ENTRIES, 0);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(limits::CONNTRACK_MAX_ENTRIES, 0);

/// Longest-prefix match of an IPv4 address in the ipcache: its exact
/// entry if it has one, else the trie's.
#[inline(always)]
pub fn ipcache_v4(addr: [u8; 4]) -> Option<&'static IpcacheEntry> {
    // SAFETY: the entry is only read, and stays valid for the program's run.
    if let Some(entry) = unsafe { IPCACHE_HOSTS.get(addr) } {
        return Some(entry);
    }
    let key = Key::new(IpKey::PREFIX_BASE + 32, IpKey::v4(addr));
    IPCACHE.get(&key)
}

/// The local pod with this IPv4 address, if it lives on this node.
#[inline(always)]
pub fn endpoint_v4(addr: [u8; 4]) -> Option<&'static EndpointInfo> {
    // SAFETY: the value is only read, and the map outlives the program run.
    unsafe { ENDPOINTS.get(addr) }
}

/// This node's settings; `None` until the agent wrote them (an array
/// entry always exists, zeroed, and no configured node has cluster id 0).
#[inline(always)]
pub fn node_config() -> Option<&'static NodeConfig> {
    NODE_CONFIG.get(0).filter(|config| config.cluster_id != 0)
}

#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<&'static ServiceInfo> {
    // SAFETY: the value is only read, and the map outlives the program run.
    unsafe { SERVICES.get(key) }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    // SAFETY: the value is only read, and the map outlives the program run.
    unsafe { BACKENDS.get(id) }
}

/// The backend id in slot `slot` of service `service_id`'s Maglev slice of
/// `table_size` slots.
#[inline(always)]
pub fn maglev_slot(table_size: u32, service_id: u32, slot: u32) -> Option<u32> {
    MAGLEV.get(service_id * table_size + slot).copied()
}

/// True when the policy map has an entry covering `key` (longest prefix).
#[inline(always)]
pub fn policy_allows(key: PolicyKey) -> bool {
    POLICY.get(Key::new(PolicyKey::FULL_BITS, key)).is_some()
}
