//! Flow events: the datapath sends every drop and a sample of forwarded
//! packets on a ring buffer; [`reader`] takes them off it at a bounded rate,
//! the agent names their ends ([`flows::FlowRecord`]) and keeps the recent
//! ones for `/flows`, which `fleetnet observe` prints.

pub mod flows;
pub mod reader;
