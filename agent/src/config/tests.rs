//! The config parser and validation, against configs written by hand and
//! the documented example.

use super::*;

const VALID: &str = "
cluster: { name: c1, id: 1, pod-cidrs: [10.1.0.0/16] }
node: { name: n1 }
etcd: { endpoints: [http://198.18.0.2:2379], lease-ttl-seconds: 10 }
source: { kind: manifests, directory: /etc/fleetnet/manifests }
";

fn with(from: &str, to: &str) -> Result<AgentConfig, String> {
    AgentConfig::parse(&VALID.replace(from, to))
}

#[test]
fn the_node_name_may_come_from_the_environment() {
    let without = VALID.replace("node: { name: n1 }\n", "");
    let env = |name: &str| (name == NODE_NAME_VARIABLE).then(|| "worker-7".to_string());
    let config = AgentConfig::parse_with(&without, env).unwrap();
    assert_eq!(config.node.name, "worker-7");
    // The config's own name wins.
    let config = AgentConfig::parse_with(VALID, env).unwrap();
    assert_eq!(config.node.name, "n1");
    let error = AgentConfig::parse_with(&without, |_| None).unwrap_err();
    assert!(error.starts_with("node.name is missing"), "{error}");
}

#[test]
fn valid_config_parses_with_defaults() {
    let config = AgentConfig::parse(VALID).unwrap();
    assert_eq!(config.cluster.id, 1);
    assert_eq!(config.node.ip, None);
    assert_eq!(config.tunnel.device, "fleetnet_vxlan");
    assert_eq!(config.tunnel.port, 4789);
    assert_eq!(config.etcd.lease_ttl_seconds, 10);
    assert_eq!(config.identities.gc_grace_seconds, 600);
    assert_eq!(config.metrics.listen, "127.0.0.1:9962");
    assert_eq!(config.pin_dir(), PathBuf::from("/sys/fs/bpf/fleetnet/n1"));
    assert_eq!(
        config.source,
        SourceSettings::Manifests {
            directory: "/etc/fleetnet/manifests".into()
        }
    );
    let kube = with(
        "{ kind: manifests, directory: /etc/fleetnet/manifests }",
        "{ kind: kube }",
    )
    .unwrap();
    assert_eq!(kube.source, SourceSettings::Kube { kubeconfig: None });
}

#[test]
fn bad_configs_get_one_clear_sentence() {
    let cases = [
        ("id: 1,", "id: 0,", "cluster.id must be between 1 and 65535"),
        // Found by the `config` fuzz target: the unknown key's newline
        // was quoted as it is.
        (
            "id: 1,",
            "id: 1, \"pod\\ncidrs\": [],",
            "cluster: unknown field `pod\\ncidrs`",
        ),
        (
            "id: 1,",
            "id: 1, labels: { env: 'prod ring' },",
            "cluster.labels value \"prod ring\" of env is not a valid label value",
        ),
        (
            "name: c1,",
            "name: C_1,",
            "cluster.name \"C_1\" is not a valid name",
        ),
        (
            "[10.1.0.0/16]",
            "[10.1.0.1/16]",
            "has host bits set; did you mean 10.1.0.0/16?",
        ),
        (
            "[10.1.0.0/16]",
            "[10.1.0.0/16, 10.1.4.0/24]",
            "cluster.pod-cidrs[1] 10.1.4.0/24 overlaps 10.1.0.0/16",
        ),
        ("[10.1.0.0/16]", "[]", "cluster.pod-cidrs must list"),
        (
            "{ name: n1 }",
            "{ name: n1, pod-cidr: 10.9.1.0/24 }",
            "node.pod-cidr 10.9.1.0/24 lies outside cluster.pod-cidrs",
        ),
        (
            "[http://198.18.0.2:2379]",
            "[198.18.0.2:2379]",
            "must start with http:// or https://",
        ),
        ("[http://198.18.0.2:2379]", "[http://etcd]", "needs a port"),
        (
            "[http://198.18.0.2:2379]",
            "[https://etcd:2379]",
            "uses https but etcd.tls.ca-file is not set",
        ),
        (
            "lease-ttl-seconds: 10",
            "lease-ttl-seconds: 1",
            "etcd.lease-ttl-seconds must be at least 2",
        ),
        (
            "lease-ttl-seconds: 10",
            "lease-ttl-seconds: 10, username: c1",
            "etcd.username and etcd.password-file go together",
        ),
        (
            "lease-ttl-seconds: 10",
            "lease-ttl-seconds: 10, password-file: /etc/fleetnet/etcd/password",
            "etcd.username and etcd.password-file go together",
        ),
        (
            "lease-ttl-seconds: 10",
            "lease-ttl-seconds: 10, username: '', password-file: /p",
            "etcd.username \"\" is not a user name",
        ),
        ("kind: manifests", "kind: files", "unknown variant `files`"),
        ("directory: /etc", "dir: /etc", "unknown field `dir`"),
        ("node: { name", "nod: { name", "unknown field `nod`"),
        (
            "source: {",
            "routing: { underlay-mtu: 500 }\nsource: {",
            "routing.underlay-mtu 500 is below IPv4's 576",
        ),
        (
            "source: {",
            "routing: { mode: direct }\nsource: {",
            "unknown variant `direct`, expected `tunnel` or `native`",
        ),
        (
            "source: {",
            "routing: { peers: { Other_Cloud: tunnel } }\nsource: {",
            "routing.peers \"Other_Cloud\" is not a valid name",
        ),
        (
            "source: {",
            "routing: { mode: native, peers: { c1: tunnel } }\nsource: {",
            "routing.peers names this cluster (c1)",
        ),
    ];
    for (from, to, expected) in cases {
        let error = with(from, to).expect_err(to);
        assert!(
            error.contains(expected),
            "{to}: got {error:?}, want {expected:?}"
        );
        assert!(!error.contains('\n'), "multi-line error: {error:?}");
    }
}

#[test]
fn routing_is_a_mode_with_exceptions_by_peer() {
    let config = AgentConfig::parse(VALID).unwrap();
    assert_eq!(config.routing, RoutingSettings::default());
    assert!(!config.routing.uses_native());

    let config = with(
        "source: {",
        "routing: { mode: native, peers: { other-cloud: tunnel }, underlay-mtu: 9000 }\nsource: {",
    )
    .unwrap();
    assert_eq!(config.routing.mode, RoutingMode::Native);
    assert_eq!(config.routing.peers["other-cloud"], RoutingMode::Tunnel);
    assert_eq!(config.routing.underlay_mtu, Some(9000));
    assert!(config.routing.uses_native());
    assert!(!config.routing.only_native());
}

#[test]
fn etcd_credentials_are_a_user_and_a_password_file() {
    assert_eq!(AgentConfig::parse(VALID).unwrap().etcd_credentials(), None);
    let config = with(
        "lease-ttl-seconds: 10",
        "lease-ttl-seconds: 10, username: c1, password-file: /etc/fleetnet/etcd/password",
    )
    .unwrap();
    assert_eq!(
        config.etcd_credentials(),
        Some(Credentials {
            username: "c1".into(),
            password_file: "/etc/fleetnet/etcd/password".into(),
        })
    );
}

#[test]
fn pin_dir_must_be_on_bpffs_root() {
    let outside = format!("{VALID}bpf: {{ pin-dir: /tmp/x }}\n");
    assert!(
        AgentConfig::parse(&outside)
            .unwrap_err()
            .contains("must lie inside bpf.root")
    );
}

/// The largest numbers a field takes are refused as such, not
/// overflowed on the way (a wrapped product passed the map size check)
/// nor tested for primality for seconds.
#[test]
fn the_largest_numbers_are_refused_at_once() {
    let services = |fields: &str| {
        AgentConfig::parse(&format!("{VALID}services: {{ {fields} }}\n")).unwrap_err()
    };
    assert_eq!(
        services("max-services: 4294967295"),
        "services.max-services times services.maglev-table-size is too large for one map"
    );
    let started = std::time::Instant::now();
    assert!(
        services("maglev-table-size: 4294967291").starts_with(
            "services.maglev-table-size 4294967291 must be a prime between 7 and 131071"
        )
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(is_prime(4_294_967_291) && !is_prime(4_294_967_295));
}

#[test]
fn the_documented_example_parses() {
    let docs = fleetnet_doc_check::doc("docs/configuration.md");
    let example = docs
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/configuration.md has a YAML config example");
    AgentConfig::parse(example)
        .unwrap_or_else(|error| panic!("docs/configuration.md example: {error}"));
}

#[test]
fn a_fleet_revisions_restart_settings_come_over_the_file() {
    let env = |settings: &'static str| {
        move |name: &str| match name {
            SETTINGS_VARIABLE => Some(settings.to_string()),
            IMAGE_VARIABLE => Some("ghcr.io/fleetnet/fleetnet:0.2.0".to_string()),
            _ => None,
        }
    };
    let config = AgentConfig::parse_with(
        VALID,
        env(r#"{"bpf":{"ipcache-max-entries":4096},"services":{"maglev-table-size":16381}}"#),
    )
    .unwrap();
    assert_eq!(config.bpf.ipcache_max_entries, 4096);
    assert_eq!(config.services.maglev_table_size, 16381);
    assert_eq!(
        config.bpf.conntrack_max_entries,
        maps::CONNTRACK_MAX_ENTRIES,
        "unset: the file's"
    );
    assert_eq!(config.image, "ghcr.io/fleetnet/fleetnet:0.2.0");
    let running = config.restart_settings();
    assert_eq!(running.bpf.ipcache_max_entries, Some(4096));
    assert_eq!(running.services.max_services, Some(maps::MAX_SERVICE_IDS));

    let error = AgentConfig::parse_with(VALID, env(r#"{"bpf":{"ipcache":1}}"#)).unwrap_err();
    assert!(
        error.starts_with("FLEETNET_SETTINGS (a fleet revision's agent settings) does not read: unknown field `ipcache`"),
        "{error}"
    );
    // Validated as the file's own values are: not a prime.
    let error = AgentConfig::parse_with(VALID, env(r#"{"services":{"maglev-table-size":1000}}"#))
        .unwrap_err();
    assert!(error.contains("maglev-table-size"), "{error}");
    assert_eq!(AgentConfig::parse(VALID).unwrap().image, "");
}

#[test]
fn the_relay_listener_is_all_or_nothing() {
    let source = "source: { kind: manifests, directory: /etc/fleetnet/manifests }";
    let tls = "tls: { ca-file: /o/ca.crt, cert-file: /o/tls.crt, key-file: /o/tls.key }";
    let config = with(
        source,
        &format!("{source}\nobserve: {{ relay-listen: '0.0.0.0:9965', {tls} }}"),
    )
    .unwrap();
    assert_eq!(config.observe.relay_listen, "0.0.0.0:9965");
    assert!(
        with(source, source)
            .unwrap()
            .observe
            .relay_listen
            .is_empty()
    );
    let cases = [
        (
            format!("{{ {tls} }}"),
            "observe.tls is set but observe.relay-listen is empty",
        ),
        (
            "{ relay-listen: '0.0.0.0:9965' }".to_string(),
            "observe.relay-listen needs observe.tls with ca-file, cert-file and key-file",
        ),
        (
            "{ relay-listen: '0.0.0.0:9965', tls: { ca-file: /o/ca.crt } }".to_string(),
            "observe.relay-listen needs observe.tls",
        ),
        (
            format!("{{ relay-listen: 'node:9965', {tls} }}"),
            "observe.relay-listen \"node:9965\" is not an address:port",
        ),
    ];
    for (observe, expected) in cases {
        let error = with(source, &format!("{source}\nobserve: {observe}")).unwrap_err();
        assert!(error.contains(expected), "{observe}: got {error:?}");
    }
}
