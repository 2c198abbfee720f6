//! The agent's HTTP endpoint on `metrics.listen` ([`server`]), what it
//! answers for `fleetnet status` ([`status`]; flows are
//! [`crate::observe::flows`]'), and the relay's mutually authenticated
//! listener for both ([`observe_listener`], [`tls`]).

pub mod observe_listener;
pub mod server;
pub mod status;
pub mod tls;
