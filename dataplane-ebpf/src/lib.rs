//! Host builds of this crate are empty: the programs live in the binary
//! target, which is only built for `bpfel-unknown-none` (see
//! dataplane-agent's build.rs). This library target exists so that the agent
//! can name the crate as a build dependency and be rebuilt when it changes.
#![no_std]
