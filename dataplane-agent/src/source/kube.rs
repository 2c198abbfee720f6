//! The `kube` source: kube-rs watchers on Nodes, this node's Pods,
//! Namespaces, Services and EndpointSlices. Works with in-cluster config
//! and with a kubeconfig file.
