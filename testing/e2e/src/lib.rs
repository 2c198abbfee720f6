//! End-to-end tests (in `tests/`) on the fleet in a box: clusters of nodes
//! of pods in network namespaces, one real `fleetnet agent` per node, a
//! real etcd, the real kernel datapath. Reachability, restarts, etcd
//! faults, a watch behind compaction, cluster isolation by etcd roles,
//! global services, policy, observability and rollouts. They need root.
