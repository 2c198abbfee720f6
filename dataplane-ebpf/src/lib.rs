//! Host builds of this crate are empty: the programs live in the binary
//! target, which only the agent's build.rs builds (a nested `cargo
//! +nightly build` for `bpfel-unknown-none`, run again whenever this
//! directory changes), and whose object it embeds.
#![no_std]
