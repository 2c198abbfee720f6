//! Services: what the cluster's Service and EndpointSlice objects and the
//! mesh's exported backends mean for the datapath.

pub mod annotations;
pub mod catalog;
pub mod maglev;
pub mod merge;
