//! The agent's HTTP endpoint on `metrics.listen` ([`server`]), and what it
//! answers for `fleetnet status` ([`status`]); flows are
//! [`crate::observe::flows`]'.

pub mod server;
pub mod status;
