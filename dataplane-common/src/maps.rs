//! Map names (as they appear in the object file and under the pin
//! directory) and their default sizes. The agent overrides sizes from its
//! configuration at load time.

pub const IPCACHE: &str = "IPCACHE";
pub const ENDPOINTS: &str = "ENDPOINTS";
pub const METRICS: &str = "METRICS";
pub const NODE_CONFIG: &str = "NODE_CONFIG";

/// Every map the datapath defines, in load order.
pub const ALL: [&str; 4] = [IPCACHE, ENDPOINTS, METRICS, NODE_CONFIG];

/// Default entry counts (Cilium uses 512k for its ipcache).
pub const IPCACHE_MAX_ENTRIES: u32 = 512 * 1024;
pub const ENDPOINTS_MAX_ENTRIES: u32 = 65_535;
pub const METRICS_MAX_ENTRIES: u32 = 65_536;

/// Program names (the function names of the entry points).
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_FROM_OVERLAY: &str = "from_overlay";
/// An empty classifier: the floor for per-packet cost measurements.
pub const PROG_FLOOR: &str = "floor";
