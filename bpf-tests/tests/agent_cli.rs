//! The agent as a user meets it: one clear sentence for each mistake, a
//! non-zero exit, and nothing half-done; pinned state survives a restart
//! with --keep-pins and is reconciled, not trusted blindly.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use bpf_tests::{
    fleet::{agent_binary, unique_name},
    netns::Netns,
};
use dataplane_agent::{bpffs, datapath::DatapathMaps};
use dataplane_common::{IpcacheEntry, identity};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A node namespace with an uplink address and a workdir for its config.
struct Scratch {
    name: String,
    netns: Netns,
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        bpf_tests::require_root();
        let name = unique_name();
        let netns = Netns::create(&name).unwrap();
        netns
            .ip("link add eth0 type veth peer name uplink")
            .unwrap();
        netns.ip("addr add 198.18.9.10/15 dev eth0").unwrap();
        netns.ip("link set eth0 up").unwrap();
        let dir = std::env::temp_dir().join(format!("fleetnet-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self { name, netns, dir }
    }

    fn config(&self, extra: &str) -> PathBuf {
        let bpf = format!(
            "bpf: {{ pin-dir: /sys/fs/bpf/fleetnet/{}, ipcache-max-entries: 1024, endpoints-max-entries: 64, metrics-max-entries: 256 }}",
            self.name
        );
        self.config_with_bpf(&bpf, extra)
    }

    fn config_with_bpf(&self, bpf: &str, extra: &str) -> PathBuf {
        let path = self.dir.join("agent.yaml");
        let text = format!(
            "cluster: {{ name: c9, id: 9 }}\n\
             node: {{ name: n1, ip: 198.18.9.10, pod-cidr: 10.9.1.0/24 }}\n\
             {bpf}\n{extra}"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn agent(&self, config: &Path) -> Command {
        let mut command = self.netns.command(agent_binary()).unwrap();
        command.arg("agent").arg("--config").arg(config);
        command
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/fleetnet/{}", self.name));
    }
}

/// The agent failed with exactly one line on stderr containing `expected`.
fn assert_one_clear_line(output: &Output, expected: &str) {
    assert!(!output.status.success(), "agent succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("fleetnet: "))
        .collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(
        lines[0].contains(expected),
        "want {expected:?} in {:?}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn a_bad_config_is_one_sentence_and_changes_nothing() {
    let scratch = Scratch::new();
    let config = scratch.config("pods:\n  - { name: web, ip: 10.8.1.2 }\n");
    let output = scratch.agent(&config).output().unwrap();
    assert_one_clear_line(
        &output,
        "pods[0] default/web (10.8.1.2) lies outside node.pod-cidr 10.9.1.0/24",
    );
    let links = scratch.netns.ip("-o link").unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("fleetnet_vxlan"),
        "tunnel device created"
    );

    let missing = scratch
        .agent(&scratch.dir.join("absent.yaml"))
        .output()
        .unwrap();
    assert_one_clear_line(&missing, "cannot read it");
}

#[test]
fn missing_privileges_are_named() {
    let scratch = Scratch::new();
    let config = scratch.config("");
    std::fs::set_permissions(
        &scratch.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(agent_binary())
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .expect("setpriv (util-linux) runs the agent as nobody");
    assert_one_clear_line(&output, "needs CAP_NET_ADMIN and CAP_BPF");
}

#[test]
fn a_pod_without_a_route_is_named_and_nothing_is_loaded() {
    let scratch = Scratch::new();
    let config = scratch.config("pods:\n  - { name: web, ip: 10.9.1.5 }\n");
    let output = scratch.agent(&config).output().unwrap();
    assert_one_clear_line(
        &output,
        "pod default/web (10.9.1.5): this node has no /32 route to it",
    );
    assert!(!Path::new(&format!("/sys/fs/bpf/fleetnet/{}", scratch.name)).exists());
}

#[test]
fn a_tunnel_name_taken_by_another_device_is_refused() {
    let scratch = Scratch::new();
    scratch
        .netns
        .ip("link add fleetnet_vxlan type veth peer name other")
        .unwrap();
    let output = scratch.agent(&scratch.config("")).output().unwrap();
    assert_one_clear_line(
        &output,
        "interface fleetnet_vxlan exists but is not a VXLAN collect_md",
    );
}

/// With --keep-pins the maps outlive the agent; the next agent reuses them
/// and removes what no longer belongs (here: an entry planted in between).
/// The BPF root is a fresh directory, so the agent must mount bpffs itself.
#[test]
fn kept_pins_are_reused_and_reconciled_and_bpffs_is_mounted_when_missing() {
    let scratch = Scratch::new();
    let root = scratch.dir.join("bpf");
    let pin_dir = root.join("node");
    let bpf = format!(
        "bpf: {{ root: {}, pin-dir: {}, ipcache-max-entries: 1024 }}",
        root.display(),
        pin_dir.display()
    );
    let config = scratch.config_with_bpf(&bpf, "");
    let run_until_ready_then_stop = |keep_pins: bool| {
        let mut command = scratch.agent(&config);
        if keep_pins {
            command.arg("--keep-pins");
        }
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        while !log.contains("fleetnet agent ready") {
            if stderr.read_line(&mut log).unwrap() == 0 {
                panic!("agent exited before it was ready: {log}");
            }
        }
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        stderr.read_to_string(&mut log).unwrap();
        assert!(child.wait().unwrap().success(), "{log}");
    };

    run_until_ready_then_stop(true);
    assert!(
        bpffs::is_bpffs(&root),
        "agent did not mount bpffs at {}",
        root.display()
    );
    let mut maps = DatapathMaps::open_pinned(&pin_dir).expect("maps kept pinned");
    let own_cidr = "10.9.1.0/24".parse().unwrap();
    let planted = "10.7.0.0/16".parse().unwrap();
    assert!(maps.ipcache().unwrap().contains_key(&own_cidr));
    let stale = IpcacheEntry {
        identity: identity::WORLD,
        tunnel_endpoint: [198, 18, 7, 7],
        cluster_id: 7,
        flags: 0,
    };
    maps.upsert_ipcache(planted, stale).unwrap();
    drop(maps);

    run_until_ready_then_stop(true);
    let entries = DatapathMaps::open_pinned(&pin_dir)
        .unwrap()
        .ipcache()
        .unwrap();
    assert!(
        entries.contains_key(&own_cidr),
        "reused map lost the node's own entry"
    );
    assert!(
        !entries.contains_key(&planted),
        "reused map kept an entry nobody published"
    );

    run_until_ready_then_stop(false);
    assert!(
        !pin_dir.exists(),
        "pins left after a stop without --keep-pins"
    );
    nix::mount::umount(&root).unwrap();
}
