//! Test builds (the `test-builds` feature, never in a release or an image):
//! an agent that says it is another version (`FLEETNET_TEST_VERSION`) and
//! one that is broken on purpose (`FLEETNET_TEST_FAULT`), so the tests can
//! roll "new" agents out through the fleet and catch a bad one.

use std::sync::OnceLock;

/// The version to report instead of this build's.
pub const VERSION_VARIABLE: &str = "FLEETNET_TEST_VERSION";
/// `shrink-path-mtu`: the agent holds packets to other nodes to 1,000
/// bytes less than the path carries, so larger ones are dropped
/// (`frag_needed`), a class of traffic a bad release could break.
pub const FAULT_VARIABLE: &str = "FLEETNET_TEST_FAULT";

/// What `shrink-path-mtu` takes off the path MTU.
const SHRUNK_BY: u16 = 1000;

pub(crate) fn version() -> Option<&'static str> {
    static VERSION: OnceLock<Option<String>> = OnceLock::new();
    VERSION
        .get_or_init(|| std::env::var(VERSION_VARIABLE).ok())
        .as_deref()
}

/// Bytes the faulty build takes off the path MTU (0 when not faulty).
pub(crate) fn path_mtu_shrink() -> u16 {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    let fault = FAULT.get_or_init(|| std::env::var(FAULT_VARIABLE).ok());
    match fault.as_deref() {
        Some("shrink-path-mtu") => SHRUNK_BY,
        _ => 0,
    }
}
