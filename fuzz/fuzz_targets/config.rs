//! The agent's config file as anyone could write it: parsed and validated
//! by the agent's own parser. Either it loads, or the error is one line.

#![no_main]

use fleetnet_agent::config::{AgentConfig, NODE_NAME_VARIABLE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads the file as UTF-8 and refuses anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for env in [None, Some("worker-7")] {
        let env = |name: &str| (name == NODE_NAME_VARIABLE).then(|| env.map(str::to_string))?;
        match AgentConfig::parse_with(text, env) {
            Ok(config) => {
                assert!(config.pin_dir().starts_with(&config.bpf.root));
            }
            Err(error) => assert!(!error.contains('\n'), "a multi-line error: {error:?}"),
        }
    }
});
