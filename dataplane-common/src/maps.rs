//! Map names (as they appear in the object file and under the pin
//! directory) and their default sizes. The agent overrides sizes from its
//! configuration at load time.

pub const IPCACHE: &str = "IPCACHE";
/// The ipcache's exact addresses (pods' /32s), looked up by hash before
/// the trie is walked; sized by the ipcache's size.
pub const IPCACHE_HOSTS: &str = "IPCACHE_HOSTS";
pub const ENDPOINTS: &str = "ENDPOINTS";
pub const METRICS: &str = "METRICS";
pub const NODE_CONFIG: &str = "NODE_CONFIG";
pub const SERVICES: &str = "SERVICES";
pub const BACKENDS: &str = "BACKENDS";
pub const MAGLEV: &str = "MAGLEV";
pub const CONNTRACK: &str = "CONNTRACK";
pub const POLICY: &str = "POLICY";
pub const EVENTS: &str = "EVENTS";
/// Events the ring buffer had no room for (one per-CPU counter).
pub const EVENTS_LOST: &str = "EVENTS_LOST";
pub const SELECTIONS: &str = "SELECTIONS";

/// Every map the datapath defines, in load order.
pub const ALL: [&str; 13] = [
    IPCACHE,
    IPCACHE_HOSTS,
    ENDPOINTS,
    METRICS,
    NODE_CONFIG,
    SERVICES,
    BACKENDS,
    MAGLEV,
    CONNTRACK,
    POLICY,
    EVENTS,
    EVENTS_LOST,
    SELECTIONS,
];

/// Default entry counts (Cilium uses 512k for its ipcache).
pub const IPCACHE_MAX_ENTRIES: u32 = 512 * 1024;
pub const ENDPOINTS_MAX_ENTRIES: u32 = 65_535;
pub const METRICS_MAX_ENTRIES: u32 = 65_536;
/// (service, backend cluster) pairs counted.
pub const SELECTIONS_MAX_ENTRIES: u32 = 65_536;
pub const SERVICES_MAX_ENTRIES: u32 = 16_384;
pub const BACKENDS_MAX_ENTRIES: u32 = 65_536;
/// Service ids 1..=this have a Maglev slice (id 0 is unused).
pub const MAX_SERVICE_IDS: u32 = 1_023;
pub const CONNTRACK_MAX_ENTRIES: u32 = 262_144;
pub const POLICY_MAX_ENTRIES: u32 = 65_536;
/// Bytes of the event ring buffer (a power of two, a multiple of pages).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Slots per service in the Maglev table: a prime well above the backend
/// count (Maglev balances within about 1% when M >= 100 N).
pub const MAGLEV_TABLE_SIZE: u32 = 1_021;

/// Program names (the function names of the entry points).
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_FROM_OVERLAY: &str = "from_overlay";
/// Attached at TC ingress of the uplink when a peer is routed natively.
pub const PROG_FROM_UNDERLAY: &str = "from_underlay";
/// Attached at TC egress of pods' host-side veths (the others at ingress).
pub const PROG_TO_POD: &str = "to_pod";
/// An empty classifier: the floor for per-packet cost measurements.
pub const PROG_FLOOR: &str = "floor";
/// from_pod cut short after each of its stages, in order (the benchmark's
/// per-stage breakdown; never attached): the stage, and the program that
/// runs up to it and passes the packet on. The last stage is from_pod.
pub const PROG_FROM_POD_STAGES: [(&str, &str); 7] = [
    ("config and IPv4 header", "from_pod_s1"),
    ("source check (endpoint hash)", "from_pod_s2"),
    ("service frontend and conntrack", "from_pod_s3"),
    ("destination (endpoint hash, ipcache)", "from_pod_s4"),
    ("policy", "from_pod_s5"),
    ("path MTU check and MSS clamp", "from_pod_s6"),
    (
        "TTL and redirect (tunnel key or peer), not counted",
        "from_pod_s7",
    ),
];
