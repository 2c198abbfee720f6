//! Packet tests (in `tests/`): frames built byte by byte and run through
//! the eBPF programs with BPF_PROG_TEST_RUN, with the maps written by the
//! agent's own programmers (`packet`, `policy`, `services`, `counters`),
//! the real verifier rejecting a broken object (`verifier`), and genuine
//! VXLAN on the wire between namespaces (`wire`). They need root.
