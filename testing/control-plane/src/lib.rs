//! Control-plane tests (in `tests/`) against real counterparts without a
//! datapath: the mesh's etcd operations (TLS, registration, identities,
//! sessions, elections, watches) and the fleet store against a real etcd
//! started by the test, and the Kubernetes source against an HTTP server
//! that speaks the API server's list and watch wire format.
