//! The overlay `fleetnet cluster join` writes: everything a member
//! cluster applies with `kubectl apply -k DIR`. The base manifests of this
//! build are copied in, so the overlay needs no checkout of the repository
//! and runs the image of the same version as the command that wrote it.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use super::join::{Joined, labels as label_list, list};

/// The base manifests of this build, as files of `DIR/base`.
const BASE: [(&str, &str); 6] = [
    (
        "kustomization.yaml",
        include_str!("../../../manifests/base/kustomization.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../../../manifests/base/namespace.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../../manifests/base/rbac.yaml"),
    ),
    (
        "agent.yaml",
        include_str!("../../../manifests/base/agent.yaml"),
    ),
    (
        "etcd-proxy.yaml",
        include_str!("../../../manifests/base/etcd-proxy.yaml"),
    ),
    ("config.yaml", BASE_CONFIG),
];
const BASE_CONFIG: &str = include_str!("../../../manifests/base/config.yaml");

/// The upstream endpoint the base's grpc-proxy is given, replaced by the
/// shared etcd's.
const PLACEHOLDER_UPSTREAM: &str = "--endpoints=https://etcd.fleet.example:2379";
/// Where the base's DaemonSet mounts the fleetnet-etcd-client Secret.
const CLIENT_SECRET_DIR: &str = "/etc/fleetnet/etcd";

/// DNS names of the grpc-proxy's Service, which its serving certificate
/// must carry.
pub fn proxy_names() -> Vec<String> {
    let service = "fleetnet-etcd-proxy.fleetnet-system";
    vec![
        format!("{service}.svc"),
        format!("{service}.svc.cluster.local"),
        "fleetnet-etcd-proxy".into(),
    ]
}

/// Writes the overlay of `joined` into `dir`; `upstream` are the shared
/// etcd's client URLs, which the cluster's grpc-proxy connects to.
pub fn write(dir: &Path, joined: &Joined, upstream: &[String]) -> io::Result<()> {
    let credentials = &joined.credentials;
    fs::create_dir_all(dir.join("base"))?;
    for (file, text) in BASE {
        fs::write(dir.join("base").join(file), text)?;
    }
    fs::write(dir.join("config.yaml"), agent_config(joined)?)?;
    let client = dir.join("etcd-client");
    fs::create_dir_all(&client)?;
    public(&client.join("ca.crt"), &credentials.ca)?;
    public(&client.join("tls.crt"), &credentials.client.cert)?;
    secret(&client.join("tls.key"), &credentials.client.key)?;
    secret(&client.join("password"), &credentials.password)?;
    let proxy = dir.join("etcd-proxy");
    fs::create_dir_all(&proxy)?;
    public(&proxy.join("ca.crt"), &credentials.ca)?;
    public(&proxy.join("tls.crt"), &credentials.proxy.cert)?;
    secret(&proxy.join("tls.key"), &credentials.proxy.key)?;
    public(&proxy.join("upstream.crt"), &credentials.upstream.cert)?;
    secret(&proxy.join("upstream.key"), &credentials.upstream.key)?;
    let observe = dir.join("observe");
    fs::create_dir_all(&observe)?;
    write_credentials(&observe, &credentials.ca, &credentials.observe)?;
    fs::write(
        dir.join("kustomization.yaml"),
        kustomization(joined, upstream),
    )
}

/// `ca.crt`, `tls.crt` and `tls.key` of `issued` in `dir`.
pub(super) fn write_credentials(
    dir: &Path,
    ca: &str,
    issued: &super::ca::Issued,
) -> io::Result<()> {
    public(&dir.join("ca.crt"), ca)?;
    public(&dir.join("tls.crt"), &issued.cert)?;
    secret(&dir.join("tls.key"), &issued.key)
}

fn public(path: &Path, text: &str) -> io::Result<()> {
    fs::write(path, text)
}

/// A file only its owner reads, made so before anything is in it.
fn secret(path: &Path, text: &str) -> io::Result<()> {
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// The base's agent config with this cluster's section and its etcd login.
fn agent_config(joined: &Joined) -> io::Result<String> {
    let record = &joined.member;
    let broken = |what: &str| {
        io::Error::other(format!(
            "the base config.yaml of this build has no {what}; it cannot be made into an overlay"
        ))
    };
    let start = BASE_CONFIG
        .find("cluster:\n")
        .ok_or_else(|| broken("cluster section"))?;
    let end = BASE_CONFIG[start..]
        .find("\n# No node section")
        .map(|end| start + end + 1)
        .ok_or_else(|| broken("end of the cluster section"))?;
    let labels = record
        .labels
        .iter()
        .map(|(key, value)| format!("{key:?}: {value:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cluster = format!(
        "cluster:\n  name: {}\n  id: {}\n  pod-cidrs: [{}]\n  labels: {{ {labels} }}\n",
        joined.name,
        record.id,
        list(&record.pod_cidrs).replace(',', ", "),
    );
    let lease = "  lease-ttl-seconds:";
    let login = format!(
        "  username: {}                     # the cluster's etcd user (fleetnet cluster join)\n  \
         password-file: {CLIENT_SECRET_DIR}/password\n",
        joined.credentials.user
    );
    let rest = &BASE_CONFIG[end..];
    let at = rest
        .find(lease)
        .ok_or_else(|| broken("etcd.lease-ttl-seconds"))?;
    Ok(format!(
        "# Cluster {} (id {}), written by `fleetnet cluster join`. Deploy with kubectl apply -k.\n{}{cluster}{}{login}{}",
        joined.name,
        record.id,
        &BASE_CONFIG[..start],
        &rest[..at],
        &rest[at..],
    ))
}

fn kustomization(joined: &Joined, upstream: &[String]) -> String {
    let record = &joined.member;
    format!(
        "# Cluster {name} (id {id}, pod CIDRs {cidrs}, labels {labels}), written by\n\
         # `fleetnet cluster join`. Deploy with: kubectl apply -k <this directory>\n\
         # base/ is the base manifests of the fleetnet that wrote it; etcd-client/,\n\
         # etcd-proxy/ and observe/ hold the cluster's credentials: keep them secret.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         \n\
         resources:\n\
         \x20 - base\n\
         \n\
         configMapGenerator:\n\
         \x20 - name: fleetnet-config\n\
         \x20   behavior: replace\n\
         \x20   files:\n\
         \x20     - config.yaml\n\
         \n\
         # Fixed names, the ones the base mounts: the agent reads its password\n\
         # file at each login, so credentials issued again need no restart.\n\
         secretGenerator:\n\
         \x20 - name: fleetnet-etcd-client\n\
         \x20   options: {{ disableNameSuffixHash: true }}\n\
         \x20   files:\n\
         \x20     - etcd-client/ca.crt\n\
         \x20     - etcd-client/tls.crt\n\
         \x20     - etcd-client/tls.key\n\
         \x20     - etcd-client/password\n\
         \x20 - name: fleetnet-etcd-proxy\n\
         \x20   options: {{ disableNameSuffixHash: true }}\n\
         \x20   files:\n\
         \x20     - etcd-proxy/ca.crt\n\
         \x20     - etcd-proxy/tls.crt\n\
         \x20     - etcd-proxy/tls.key\n\
         \x20     - etcd-proxy/upstream.crt\n\
         \x20     - etcd-proxy/upstream.key\n\
         \x20 - name: fleetnet-observe\n\
         \x20   options: {{ disableNameSuffixHash: true }}\n\
         \x20   files:\n\
         \x20     - observe/ca.crt\n\
         \x20     - observe/tls.crt\n\
         \x20     - observe/tls.key\n\
         \n\
         # The grpc-proxy connects to the shared etcd.\n\
         patches:\n\
         \x20 - target: {{ kind: Deployment, name: fleetnet-etcd-proxy }}\n\
         \x20   patch: |-\n\
         \x20     - op: test\n\
         \x20       path: /spec/template/spec/containers/0/command/3\n\
         \x20       value: {PLACEHOLDER_UPSTREAM}\n\
         \x20     - op: replace\n\
         \x20       path: /spec/template/spec/containers/0/command/3\n\
         \x20       value: --endpoints={upstream}\n",
        name = joined.name,
        id = record.id,
        cidrs = list(&record.pod_cidrs),
        labels = label_list(&record.labels),
        upstream = upstream.join(","),
    )
}
