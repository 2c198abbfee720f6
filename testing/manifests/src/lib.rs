//! Manifest tests (in `tests/`): every kustomization rendered with
//! `kubectl kustomize` and validated offline against the Kubernetes API
//! schemas, and the config and flags in them checked by the agent's own
//! parsers.
