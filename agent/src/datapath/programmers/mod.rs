//! Every writer of the datapath's maps, each keeping one map (or one set
//! of maps) equal to what the agent wants, writing only the entries that
//! change, and taking over what a previous run left in pinned maps.

pub mod endpoints;
pub mod ipcache;
pub mod policy;
pub mod services;
