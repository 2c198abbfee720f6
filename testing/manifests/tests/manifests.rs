//! The Kubernetes manifests in manifests/, checked offline as a user would
//! deploy them: every kustomization renders with `kubectl kustomize`; what
//! it renders passes Kubernetes' own API schemas (kubernetes-validate,
//! strict: unknown fields are errors); the agent config in every ConfigMap
//! loads with the agent's own parser; the agent's RBAC is exactly what its
//! watchers use; and the DaemonSet's and the fleet controller's wiring
//! (node name, config path, certificates, ports, flags) agrees with that
//! config and with the `fleetnet` command line.
//!
//! Needs kubectl and kubernetes-validate; a missing one fails the test
//! with what to do, it never skips.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use fleetnet_agent::config::AgentConfig;
use fleetnet_testing::fleet_in_a_box::agent_binary;
use serde::Deserialize;
use serde_yaml::Value;

const SETUP: &str =
    "run `cargo xtask setup`, which installs kubernetes-validate and says how to get kubectl";

/// Oldest Kubernetes the manifests are meant for, and the newest the pinned
/// kubernetes-validate knows: a field missing from either is an error.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.31.0", "1.37.0"];

/// Kinds defined by CRDs, which kubernetes-validate has no schema for. Only
/// these may go unvalidated; every other object must be reported passed.
const CUSTOM_KINDS: [&str; 1] = ["PodMonitor"];

const NAMESPACE: &str = "fleetnet-system";
/// The images `cargo xtask image` builds (it reads these names from the
/// kustomizations' `images:`).
const AGENT_IMAGE: &str = "ghcr.io/fleetnet/fleetnet";
const CONTROLLER_IMAGE: &str = "ghcr.io/fleetnet/fleetnet-controller";
const ETCD_CLIENT_SECRET: &str = "fleetnet-etcd-client";
const ETCD_CLIENT_KEYS: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

fn manifests_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    dir.canonicalize()
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
}

/// manifests/overlays/*: one directory per example cluster.
fn overlay_dirs() -> Vec<PathBuf> {
    let root = manifests_dir().join("overlays");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("kustomization.yaml").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 2,
        "expected at least two example clusters under {}, found {dirs:?}",
        root.display()
    );
    dirs
}

fn dir_name(dir: &Path) -> &str {
    dir.file_name().unwrap().to_str().unwrap()
}

/// What `kubectl kustomize DIR` renders, as YAML objects.
struct Rendered {
    dir: PathBuf,
    yaml: String,
    objects: Vec<Value>,
}

fn render(dir: &Path) -> Rendered {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run kubectl ({error}): {SETUP}"));
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).unwrap();
    let objects = serde_yaml::Deserializer::from_str(&yaml)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|object| !object.is_null())
        .collect();
    Rendered {
        dir: dir.to_path_buf(),
        yaml,
        objects,
    }
}

fn render_base_and_overlays() -> Vec<Rendered> {
    std::iter::once(manifests_dir().join("base"))
        .chain(overlay_dirs())
        .map(|dir| render(&dir))
        .collect()
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
}

impl Rendered {
    /// The directory, relative to the repository: `manifests/overlays/c1`.
    fn name(&self) -> String {
        let repo = manifests_dir().parent().unwrap().to_path_buf();
        let dir = self.dir.strip_prefix(&repo).unwrap_or(&self.dir);
        dir.display().to_string()
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|object| object["kind"].as_str() == Some(kind))
            .collect()
    }

    fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.of_kind(kind)
            .into_iter()
            .find(|object| object["metadata"]["name"].as_str() == Some(name))
    }

    fn find(&self, kind: &str, name: &str) -> &Value {
        self.get(kind, name)
            .unwrap_or_else(|| panic!("{}: renders no {kind} {name}", self.name()))
    }

    fn agent(&self) -> Workload<'_> {
        Workload::new(self, "DaemonSet", "fleetnet-agent")
    }

    /// The agent config in the ConfigMap the DaemonSet mounts, and its text.
    fn agent_config(&self) -> (AgentConfig, String) {
        let agent = self.agent();
        let volume = agent.volume_mounted_at_config();
        let configmap_name = text(
            &volume["configMap"]["name"],
            "the config volume's configMap.name",
        );
        let configmap = self.find("ConfigMap", configmap_name);
        let config = text(
            &configmap["data"]["config.yaml"],
            "the ConfigMap's config.yaml",
        );
        let parsed = AgentConfig::parse_with(config, |name| {
            (name == "FLEETNET_NODE_NAME").then(|| "node-1".to_string())
        })
        .unwrap_or_else(|error| {
            panic!(
                "{}: the agent refuses ConfigMap {configmap_name}'s config.yaml: {error}",
                self.name()
            )
        });
        (parsed, config.to_string())
    }
}

/// A DaemonSet's or Deployment's pod and its one container.
struct Workload<'a> {
    what: String,
    pod: &'a Value,
    container: &'a Value,
}

impl<'a> Workload<'a> {
    fn new(rendered: &'a Rendered, kind: &str, name: &str) -> Self {
        let object = rendered.find(kind, name);
        let pod = &object["spec"]["template"]["spec"];
        let containers = list(&pod["containers"], "containers");
        assert_eq!(containers.len(), 1, "{kind} {name}: one container");
        Self {
            what: format!("{}: {kind} {name}", rendered.name()),
            pod,
            container: &containers[0],
        }
    }

    fn command(&self) -> Vec<String> {
        list(&self.container["command"], "command")
            .iter()
            .map(|arg| text(arg, "a command argument").to_string())
            .collect()
    }

    /// The value after `flag` in the command.
    fn flag(&self, flag: &str) -> String {
        let command = self.command();
        let at = command
            .iter()
            .position(|arg| arg == flag)
            .unwrap_or_else(|| panic!("{}: no {flag} in {command:?}", self.what));
        command
            .get(at + 1)
            .unwrap_or_else(|| panic!("{}: {flag} has no value", self.what))
            .clone()
    }

    fn env_field_ref(&self, variable: &str) -> String {
        let env = list(&self.container["env"], "env");
        let entry = env
            .iter()
            .find(|entry| entry["name"].as_str() == Some(variable))
            .unwrap_or_else(|| panic!("{}: no env {variable}", self.what));
        text(
            &entry["valueFrom"]["fieldRef"]["fieldPath"],
            &format!("env {variable}'s valueFrom.fieldRef.fieldPath"),
        )
        .to_string()
    }

    fn volume(&self, name: &str) -> &'a Value {
        list(&self.pod["volumes"], "volumes")
            .iter()
            .find(|volume| volume["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: no volume {name}", self.what))
    }

    fn mounts(&self) -> &'a [Value] {
        list(&self.container["volumeMounts"], "volumeMounts")
    }

    fn mount_at(&self, path: &str) -> &'a Value {
        self.mounts()
            .iter()
            .find(|mount| mount["mountPath"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("{}: nothing mounted at {path}", self.what))
    }

    /// The volume holding the file `--config` names: mounted as that file
    /// (subPath config.yaml), or as its directory.
    fn volume_mounted_at_config(&self) -> &'a Value {
        let config = self.flag("--config");
        let path = Path::new(&config);
        let mount = self
            .mounts()
            .iter()
            .find(|mount| {
                let at = mount["mountPath"].as_str().unwrap_or_default();
                let file = match mount["subPath"].as_str() {
                    Some(sub_path) => (at == config).then_some(sub_path),
                    None => (Path::new(at) == path.parent().unwrap())
                        .then(|| path.file_name().unwrap().to_str().unwrap()),
                };
                file == Some("config.yaml")
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: --config {config} is not where a volume puts config.yaml: {:?}",
                    self.what,
                    self.mounts()
                )
            });
        let volume = self.volume(text(&mount["name"], "volumeMount name"));
        assert!(
            volume["configMap"]["items"].is_null(),
            "{}: the config volume remaps keys",
            self.what
        );
        volume
    }

    /// Every file lies in the mounted etcd client Secret, under one of its keys.
    fn assert_in_etcd_client_secret(&self, files: &[&Path]) {
        for file in files {
            let mount = self.mount_at(file.parent().unwrap().to_str().unwrap());
            let volume = self.volume(text(&mount["name"], "volumeMount name"));
            assert_eq!(
                volume["secret"]["secretName"].as_str(),
                Some(ETCD_CLIENT_SECRET),
                "{}: {} is not in the Secret {ETCD_CLIENT_SECRET}",
                self.what,
                file.display()
            );
            let key = file.file_name().unwrap().to_str().unwrap();
            assert!(
                ETCD_CLIENT_KEYS.contains(&key),
                "{}: {} names no key of {ETCD_CLIENT_SECRET} ({ETCD_CLIENT_KEYS:?})",
                self.what,
                file.display()
            );
        }
    }

    fn port(&self, name: &str) -> u64 {
        list(&self.container["ports"], "ports")
            .iter()
            .find(|port| port["name"].as_str() == Some(name))
            .and_then(|port| port["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no container port {name}", self.what))
    }

    /// A probe's HTTP path and port.
    fn http_probe(&self, probe: &str) -> (String, u64) {
        let get = &self.container[probe]["httpGet"];
        (
            text(&get["path"], &format!("{probe} path")).to_string(),
            get["port"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: {probe} has no numeric port", self.what)),
        )
    }
}

fn port_of(address: &str) -> u64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{address} has no port"))
}

/// Runs kubernetes-validate over `yaml`; its exit status and report.
fn kubernetes_validate(yaml: &str, label: &str) -> (bool, String) {
    let file = std::env::temp_dir().join(format!(
        "fleetnet-manifests-{}-{label}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, yaml).unwrap();
    let mut command = Command::new("python3");
    command.args(["-m", "kubernetes_validate", "--strict"]);
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    let output: Output = command
        .arg(&file)
        .output()
        .unwrap_or_else(|error| panic!("cannot run python3 ({error}): {SETUP}"));
    std::fs::remove_file(&file).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed: {SETUP}"
    );
    let report = format!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
    (output.status.success(), report)
}

/// `rendered` passes the API schemas, and every object was actually checked
/// (an apiVersion without a schema is only a warning to the tool).
fn assert_valid(rendered: &Rendered) {
    let label = rendered.name().replace(['/', '.'], "_");
    let (passed, report) = kubernetes_validate(&rendered.yaml, &label);
    assert!(
        passed,
        "{} does not pass the Kubernetes API schemas:\n{report}",
        rendered.name()
    );
    for object in &rendered.objects {
        let kind = text(&object["kind"], "kind");
        let name = text(&object["metadata"]["name"], "metadata.name");
        if CUSTOM_KINDS.contains(&kind) {
            continue;
        }
        for version in KUBERNETES_VERSIONS {
            let minor = version.rsplit_once('.').unwrap().0;
            let passed = format!(
                " passed for resource {}/{name} against version {minor}",
                kind.to_lowercase()
            );
            assert!(
                report
                    .lines()
                    .any(|line| line.starts_with("INFO") && line.ends_with(&passed)),
                "{}: {kind} {name} was not validated against Kubernetes {minor} \
                 (no schema for its apiVersion?):\n{report}",
                rendered.name()
            );
        }
    }
    for warning in report.lines().filter(|line| line.starts_with("WARN")) {
        assert!(
            CUSTOM_KINDS
                .iter()
                .any(|kind| warning.contains(&format!(" kind {kind} with "))),
            "{}: unexpected warning: {warning}",
            rendered.name()
        );
    }
}

#[test]
fn every_kustomization_renders_and_passes_the_api_schemas() {
    let mut dirs = vec![
        manifests_dir().join("base"),
        manifests_dir().join("examples"),
    ];
    dirs.extend(overlay_dirs());
    for dir in dirs {
        let rendered = render(&dir);
        assert!(
            !rendered.objects.is_empty(),
            "{} renders nothing",
            rendered.name()
        );
        assert_valid(&rendered);
    }
}

/// The schema check is live: a wrong type and an unknown field each fail it.
#[test]
fn the_schema_check_rejects_broken_manifests() {
    let examples = render(&manifests_dir().join("examples"));
    assert!(examples.yaml.contains("  replicas: 2\n"));
    let wrong_type = examples
        .yaml
        .replacen("  replicas: 2\n", "  replicas: \"two\"\n", 1);
    let (passed, report) = kubernetes_validate(&wrong_type, "wrong-type");
    assert!(
        !passed && report.contains("spec.replicas: 'two' is not of type 'integer'"),
        "replicas: \"two\" passed the schema check:\n{report}"
    );

    let agent = render(&overlay_dirs()[0]);
    assert!(agent.yaml.contains("      hostNetwork: true\n"));
    let unknown_field = agent.yaml.replacen(
        "      hostNetwork: true\n",
        "      hostNetwork: true\n      hostNetworking: true\n",
        1,
    );
    let (passed, report) = kubernetes_validate(&unknown_field, "unknown-field");
    assert!(
        !passed && report.contains("'hostNetworking' was unexpected"),
        "an unknown pod field passed the strict schema check:\n{report}"
    );
}

#[test]
fn every_agent_config_loads_with_the_agents_parser() {
    let base = render(&manifests_dir().join("base"));
    let (config, _) = base.agent_config();
    assert_eq!(
        config.node.name, "node-1",
        "the base config names its node instead of taking FLEETNET_NODE_NAME"
    );
    assert_eq!(
        std::fs::read_to_string(manifests_dir().join("base/config.yaml")).unwrap(),
        base.agent_config().1,
        "the base ConfigMap is not base/config.yaml"
    );

    // What the example overlays set: name, id, pod CIDR, env label.
    let expected = [
        ("c1", 1, "10.1.0.0/16", "canary"),
        ("c2", 2, "10.2.0.0/16", "prod"),
    ];
    let mut seen: Vec<(String, u16, Vec<ipnet::Ipv4Net>)> = Vec::new();
    for dir in overlay_dirs() {
        let rendered = render(&dir);
        let (config, text) = rendered.agent_config();
        let cluster = &config.cluster;
        assert_eq!(
            cluster.name,
            dir_name(&dir),
            "{}: an overlay's cluster name is its directory's",
            rendered.name()
        );
        assert!(
            !text.contains("replace-me"),
            "{}: the base placeholder survives",
            rendered.name()
        );
        assert_eq!(
            config.node.name,
            "node-1",
            "{}: a node section",
            rendered.name()
        );
        if let Some((_, id, cidr, env)) = expected
            .iter()
            .find(|(name, ..)| *name == cluster.name.as_str())
        {
            assert_eq!(cluster.id, *id, "{}: cluster.id", rendered.name());
            assert_eq!(
                cluster.pod_cidrs,
                vec![cidr.parse().unwrap()],
                "{}: cluster.pod-cidrs",
                rendered.name()
            );
            assert_eq!(
                cluster.labels.get("env").map(String::as_str),
                Some(*env),
                "{}: cluster.labels.env",
                rendered.name()
            );
        }
        for (name, id, cidrs) in &seen {
            assert_ne!(
                &cluster.id, id,
                "{} and {name} share cluster.id",
                cluster.name
            );
            for cidr in cidrs {
                for mine in &cluster.pod_cidrs {
                    assert!(
                        !mine.contains(cidr) && !cidr.contains(mine),
                        "{}'s pod CIDR {mine} overlaps {name}'s {cidr}",
                        cluster.name
                    );
                }
            }
        }
        seen.push((cluster.name.clone(), cluster.id, cluster.pod_cidrs.clone()));
    }
    for (name, ..) in expected {
        assert!(
            seen.iter().any(|(seen, ..)| seen == name),
            "no overlay for example cluster {name}"
        );
    }
}

#[test]
fn agent_rbac_is_what_its_watchers_use_and_its_own_daemonset() {
    // agent/src/source/kube.rs: one watcher (list, then watch)
    // per kind.
    let mut expected = BTreeSet::new();
    for (group, resource) in [
        ("", "nodes"),
        ("", "pods"),
        ("", "namespaces"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "networkpolicies"),
    ] {
        for verb in ["list", "watch"] {
            expected.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    for rendered in render_base_and_overlays() {
        let role = rendered.find("ClusterRole", "fleetnet-agent");
        let mut granted = BTreeSet::new();
        for rule in list(&role["rules"], "rules") {
            let keys: BTreeSet<&str> = rule
                .as_mapping()
                .unwrap()
                .keys()
                .map(|key| key.as_str().unwrap())
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["apiGroups", "resources", "verbs"]),
                "{}: a rule with more than groups, resources and verbs: {rule:?}",
                rendered.name()
            );
            for group in list(&rule["apiGroups"], "apiGroups") {
                for resource in list(&rule["resources"], "resources") {
                    for verb in list(&rule["verbs"], "verbs") {
                        granted.insert((
                            text(group, "group").to_string(),
                            text(resource, "resource").to_string(),
                            text(verb, "verb").to_string(),
                        ));
                    }
                }
            }
        }
        assert_eq!(
            granted,
            expected,
            "{}: the agent's ClusterRole is not exactly list and watch on what it watches",
            rendered.name()
        );

        // Beyond its watchers, exactly one rule: get and patch on its own
        // DaemonSet, by name, in its namespace (agent/src/daemonset/).
        let role = rendered.find("Role", "fleetnet-agent");
        assert_eq!(role["metadata"]["namespace"].as_str(), Some(NAMESPACE));
        let rules = list(&role["rules"], "rules");
        let daemonset = rendered.find("DaemonSet", "fleetnet-agent");
        let daemonset_name = text(&daemonset["metadata"]["name"], "DaemonSet name");
        let expected_rule: serde_yaml::Value = serde_yaml::from_str(&format!(
            "{{ apiGroups: [apps], resources: [daemonsets], resourceNames: [{daemonset_name}], verbs: [get, patch] }}"
        ))
        .unwrap();
        assert_eq!(
            rules,
            [expected_rule],
            "{}: the agent's Role is not exactly get and patch on its DaemonSet",
            rendered.name()
        );

        for (kind, role_kind) in [
            ("ClusterRoleBinding", "ClusterRole"),
            ("RoleBinding", "Role"),
        ] {
            let binding = rendered.find(kind, "fleetnet-agent");
            assert_eq!(binding["roleRef"]["kind"].as_str(), Some(role_kind));
            assert_eq!(binding["roleRef"]["name"].as_str(), Some("fleetnet-agent"));
            let subjects = list(&binding["subjects"], "subjects");
            assert_eq!(subjects.len(), 1, "{}: one subject", rendered.name());
            assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"));
            assert_eq!(subjects[0]["name"].as_str(), Some("fleetnet-agent"));
            assert_eq!(subjects[0]["namespace"].as_str(), Some(NAMESPACE));
        }
        rendered.find("ServiceAccount", "fleetnet-agent");
        assert_eq!(
            rendered.agent().pod["serviceAccountName"].as_str(),
            Some("fleetnet-agent")
        );

        // No other grants, and no API token where nothing uses one.
        for kind in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"] {
            let names: Vec<_> = rendered
                .of_kind(kind)
                .iter()
                .map(|object| object["metadata"]["name"].as_str().unwrap_or_default())
                .filter(|name| *name != "fleetnet-agent")
                .collect();
            assert!(
                names.is_empty(),
                "{}: unexpected {kind} {names:?}",
                rendered.name()
            );
        }
        for deployment in rendered.of_kind("Deployment") {
            assert_eq!(
                deployment["spec"]["template"]["spec"]["automountServiceAccountToken"].as_bool(),
                Some(false),
                "{}: Deployment {:?} mounts an API token it does not use",
                rendered.name(),
                deployment["metadata"]["name"]
            );
        }
    }
}

#[test]
fn agent_daemonset_wiring_matches_its_config() {
    for rendered in render_base_and_overlays() {
        let (config, _) = rendered.agent_config();
        // The DaemonSet a fleet revision's agent is written into is this
        // one, and the RBAC Role names it.
        let daemonset = rendered.find("DaemonSet", "fleetnet-agent");
        assert_eq!(
            (
                config.daemonset.namespace.as_str(),
                config.daemonset.name.as_str(),
                config.daemonset.container.as_str(),
            ),
            (
                text(&daemonset["metadata"]["namespace"], "namespace"),
                "fleetnet-agent",
                text(&rendered.agent().container["name"], "container name"),
            ),
            "{}: the config's daemonset is not the agent's DaemonSet",
            rendered.name()
        );
        let agent = rendered.agent();
        let what = &agent.what;

        assert_eq!(
            agent.env_field_ref("FLEETNET_NODE_NAME"),
            "spec.nodeName",
            "{what}: FLEETNET_NODE_NAME"
        );
        // --config names the mounted config.yaml (checked by agent_config,
        // which found the ConfigMap through that mount).
        assert_eq!(
            &agent.command()[..2],
            ["fleetnet", "agent"],
            "{what}: command"
        );

        let tls = config
            .etcd
            .tls
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: the config has no etcd.tls"));
        let files: Vec<&Path> = [
            Some(&tls.ca_file),
            tls.cert_file.as_ref(),
            tls.key_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
        assert_eq!(
            files.len(),
            3,
            "{what}: etcd TLS without a client certificate"
        );
        agent.assert_in_etcd_client_secret(&files);

        // The endpoint is the proxy's Service, resolved through cluster DNS
        // from the host network.
        assert_eq!(config.etcd.endpoints.len(), 1);
        let endpoint = &config.etcd.endpoints[0];
        let service = rendered.find("Service", "fleetnet-etcd-proxy");
        let port = list(&service["spec"]["ports"], "ports")[0]["port"]
            .as_u64()
            .unwrap();
        assert_eq!(
            endpoint,
            &format!("https://fleetnet-etcd-proxy.{NAMESPACE}.svc:{port}"),
            "{what}: etcd.endpoints is not the grpc-proxy Service"
        );
        assert_eq!(
            agent.pod["hostNetwork"].as_bool(),
            Some(true),
            "{what}: hostNetwork"
        );
        assert_eq!(
            agent.pod["dnsPolicy"].as_str(),
            Some("ClusterFirstWithHostNet"),
            "{what}: in the host network only this resolves the proxy's Service name"
        );

        // Metrics, probes and the config's listen address agree.
        let metrics = agent.port("metrics");
        assert_eq!(
            port_of(&config.metrics.listen),
            metrics,
            "{what}: metrics.listen"
        );
        assert!(
            config.metrics.listen.starts_with("0.0.0.0:"),
            "{what}: the kubelet and Prometheus reach metrics.listen on the node's address"
        );
        assert_eq!(
            agent.http_probe("livenessProbe"),
            ("/healthz".to_string(), metrics)
        );
        assert_eq!(
            agent.http_probe("readinessProbe"),
            ("/readyz".to_string(), metrics)
        );

        // Pins outlive the container, in the node's bpffs.
        let bpf_root = config.bpf.root.to_str().unwrap();
        let bpffs = agent.mount_at(bpf_root);
        assert_eq!(
            bpffs["mountPropagation"].as_str(),
            Some("Bidirectional"),
            "{what}: {bpf_root}"
        );
        let volume = agent.volume(text(&bpffs["name"], "volumeMount name"));
        assert_eq!(volume["hostPath"]["path"].as_str(), Some(bpf_root));
        assert_eq!(
            agent.container["securityContext"]["privileged"].as_bool(),
            Some(true),
            "{what}: Bidirectional propagation needs a privileged container"
        );
    }
}

/// `fleetnet ARGS --help` exits 0 only when every flag before --help exists
/// and has its value.
fn assert_cli_accepts(what: &str, command: &[String]) {
    assert_eq!(command[0], "fleetnet", "{what}: runs {command:?}");
    let output = Command::new(agent_binary())
        .args(&command[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{what}: fleetnet refuses {command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One version everywhere: every kustomization runs the agent's and the
/// controller's images at the workspace's version, the one `fleetnet
/// --version` and `cargo xtask image` say.
#[test]
fn images_are_this_builds_version() {
    let version = env!("CARGO_PKG_VERSION");
    for rendered in render_base_and_overlays() {
        let agent = rendered.agent();
        assert_eq!(
            text(&agent.container["image"], "image"),
            format!("{AGENT_IMAGE}:{version}"),
            "{}",
            agent.what
        );
        if rendered
            .get("Deployment", "fleetnet-fleet-controller")
            .is_some()
        {
            let controller = Workload::new(&rendered, "Deployment", "fleetnet-fleet-controller");
            assert_eq!(
                text(&controller.container["image"], "image"),
                format!("{CONTROLLER_IMAGE}:{version}"),
                "{}",
                controller.what
            );
        }
    }
}

#[test]
fn commands_are_accepted_by_the_fleetnet_cli() {
    let mut hosts = Vec::new();
    for rendered in render_base_and_overlays() {
        let agent = rendered.agent();
        assert_cli_accepts(&agent.what, &agent.command());

        if rendered
            .get("Deployment", "fleetnet-fleet-controller")
            .is_none()
        {
            continue;
        }
        hosts.push(rendered.name());
        let controller = Workload::new(&rendered, "Deployment", "fleetnet-fleet-controller");
        let what = &controller.what;
        let mut command = controller.command();
        assert_eq!(&command[..3], ["fleetnet", "fleet", "controller"], "{what}");
        // Kubernetes expands $(POD_NAME) from the container's env.
        assert_eq!(controller.flag("--name"), "$(POD_NAME)", "{what}: --name");
        assert_eq!(
            controller.env_field_ref("POD_NAME"),
            "metadata.name",
            "{what}: POD_NAME"
        );
        for arg in &mut command {
            *arg = arg.replace("$(POD_NAME)", "fleetnet-fleet-controller-0");
        }
        assert_cli_accepts(what, &command);

        // Same etcd and certificates as the agents of its cluster.
        let (config, _) = rendered.agent_config();
        assert_eq!(controller.flag("--etcd"), config.etcd.endpoints.join(","));
        let files: Vec<PathBuf> = ["--etcd-ca", "--etcd-cert", "--etcd-key"]
            .iter()
            .map(|flag| PathBuf::from(controller.flag(flag)))
            .collect();
        let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        controller.assert_in_etcd_client_secret(&files);

        let metrics = controller.port("metrics");
        assert_eq!(port_of(&controller.flag("--metrics")), metrics, "{what}");
        assert_eq!(
            controller.http_probe("livenessProbe"),
            ("/healthz".to_string(), metrics)
        );
        let security = &controller.container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(
            controller.pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true)
        );
    }
    assert_eq!(
        hosts.len(),
        1,
        "the fleet controller belongs in exactly one example cluster, found in {hosts:?}"
    );
}

/// The overlay `fleetnet cluster join` writes renders, passes the same
/// schema checks, carries the cluster's config and credentials, and points
/// the grpc-proxy at the shared etcd.
#[test]
fn the_overlay_cluster_join_writes_is_valid_and_complete() {
    use fleetnet_fleet::membership::{
        ca::FleetCa,
        join::{Credentials, Joined},
        overlay,
    };
    use fleetnet_store::records::{MemberRecord, MemberState, VERSION};

    let ca = FleetCa::generate().unwrap();
    let user = "fleetnet-c7-g2".to_string();
    let joined = Joined {
        name: "c7".into(),
        member: MemberRecord {
            v: VERSION,
            id: 7,
            pod_cidrs: vec![
                "10.7.0.0/16".parse().unwrap(),
                "10.77.0.0/16".parse().unwrap(),
            ],
            labels: [("env".to_string(), "prod".to_string())].into(),
            state: MemberState::Joined,
            generation: 2,
            since: 0.0,
        },
        credentials: Credentials {
            password: "secret-password".into(),
            client: ca.issue(&user, &[]).unwrap(),
            proxy: ca
                .issue("fleetnet-etcd-proxy", &overlay::proxy_names())
                .unwrap(),
            upstream: ca.issue("", &[]).unwrap(),
            observe: ca.issue("", &["c7.agents.fleetnet".to_string()]).unwrap(),
            ca: ca.cert.clone(),
            user: user.clone(),
        },
        again: false,
    };
    let dir = std::env::temp_dir().join(format!("fleetnet-join-overlay-{}", std::process::id()));
    let upstream = "https://etcd-a.example:2379,https://etcd-b.example:2379";
    overlay::write(
        &dir,
        &joined,
        &upstream.split(',').map(str::to_string).collect::<Vec<_>>(),
    )
    .unwrap();
    let rendered = render(&dir);
    assert_valid(&rendered);
    let (config, _) = rendered.agent_config();
    assert_eq!((config.cluster.name.as_str(), config.cluster.id), ("c7", 7));
    assert_eq!(config.cluster.pod_cidrs, joined.member.pod_cidrs);
    assert_eq!(config.cluster.labels, joined.member.labels);
    assert_eq!(config.etcd.username.as_deref(), Some(user.as_str()));
    // The Secrets the DaemonSet and the proxy mount hold the credentials.
    let secret = |prefix: &str| {
        rendered
            .of_kind("Secret")
            .into_iter()
            .find(|secret| text(&secret["metadata"]["name"], "metadata.name").starts_with(prefix))
            .unwrap_or_else(|| panic!("no Secret {prefix}"))
            .clone()
    };
    let client = secret("fleetnet-etcd-client");
    let mounted = text(
        &rendered.agent().volume("etcd-client")["secret"]["secretName"],
        "secretName",
    )
    .to_string();
    assert_eq!(client["metadata"]["name"].as_str(), Some(mounted.as_str()));
    let decoded = |secret: &Value, key: &str| {
        let output = Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text(&secret["data"][key], key).as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(decoded(&client, "password"), "secret-password");
    assert_eq!(decoded(&client, "ca.crt"), ca.cert);
    assert_eq!(
        config.etcd.password_file.as_deref(),
        Some(Path::new("/etc/fleetnet/etcd/password")),
        "the password file is the Secret's, where the DaemonSet mounts it"
    );
    let proxy = secret("fleetnet-etcd-proxy");
    for key in [
        "ca.crt",
        "tls.crt",
        "tls.key",
        "upstream.crt",
        "upstream.key",
    ] {
        assert!(!decoded(&proxy, key).is_empty(), "proxy Secret lacks {key}");
    }
    // The agents' observe listener: its Secret, where the config reads it.
    let observe = secret("fleetnet-observe");
    assert_eq!(
        text(
            &rendered.agent().volume("observe")["secret"]["secretName"],
            "secretName"
        ),
        "fleetnet-observe"
    );
    let tls = config.observe.tls.as_ref().expect("observe.tls");
    for (key, path) in [
        ("ca.crt", &tls.ca_file),
        ("tls.crt", tls.cert_file.as_ref().unwrap()),
        ("tls.key", tls.key_file.as_ref().unwrap()),
    ] {
        assert!(
            !decoded(&observe, key).is_empty(),
            "observe Secret lacks {key}"
        );
        assert_eq!(path, &Path::new("/etc/fleetnet/observe").join(key));
    }
    assert_eq!(config.observe.relay_listen, "0.0.0.0:9965");
    let command = Workload::new(&rendered, "Deployment", "fleetnet-etcd-proxy").command();
    assert!(
        command.contains(&format!("--endpoints={upstream}")),
        "the grpc-proxy does not reach the shared etcd: {command:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
