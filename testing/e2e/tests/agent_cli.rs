//! The agent as a user meets it: one clear sentence for each mistake, a
//! non-zero exit, and nothing half-done; local pods served while etcd is
//! unreachable; pinned state that survives a restart with --keep-pins and
//! is reconciled, not trusted blindly.

use std::{
    io::{BufRead, BufReader, Read},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use dataplane_common::{IpcacheEntry, identity};
use fleetnet_agent::datapath::{DatapathMaps, bpffs};
use fleetnet_testing::{
    etcd::Etcd,
    fleet_in_a_box::{agent_binary, unique_name},
    netns::Netns,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A node namespace with an uplink address, a manifests directory with its
/// Node object, and a workdir for its config.
struct Scratch {
    name: String,
    netns: Netns,
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        fleetnet_testing::require_root();
        let name = unique_name();
        let netns = Netns::create(&name).unwrap();
        netns
            .ip("link add eth0 type veth peer name uplink")
            .unwrap();
        netns.ip("addr add 198.18.9.10/15 dev eth0").unwrap();
        netns.ip("link set eth0 up").unwrap();
        let dir = std::env::temp_dir().join(format!("fleetnet-{name}"));
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        std::fs::write(
            dir.join("manifests/node.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata: { name: n1 }\nspec: { podCIDRs: [10.9.1.0/24] }\n\
             status: { addresses: [ { type: InternalIP, address: 198.18.9.10 } ] }\n",
        )
        .unwrap();
        Self { name, netns, dir }
    }

    fn pin_dir(&self) -> String {
        format!("/sys/fs/bpf/fleetnet/{}", self.name)
    }

    /// A config whose etcd is `etcd` (by default one nobody listens on).
    fn config(&self, etcd: &str, extra: &str) -> PathBuf {
        let path = self.dir.join("agent.yaml");
        let text = format!(
            "cluster: {{ name: c9, id: 9, pod-cidrs: [10.9.0.0/16] }}\n\
             node: {{ name: n1 }}\n\
             etcd: {{ endpoints: ['{etcd}'], lease-ttl-seconds: 5 }}\n\
             source: {{ kind: manifests, directory: {} }}\n\
             metrics: {{ listen: '' }}\n\
             {extra}",
            self.dir.join("manifests").display()
        );
        let text = if extra.contains("bpf:") {
            text
        } else {
            format!(
                "{text}bpf: {{ pin-dir: {}, ipcache-max-entries: 1024, endpoints-max-entries: 64, metrics-max-entries: 256 }}\n",
                self.pin_dir()
            )
        };
        std::fs::write(&path, text).unwrap();
        path
    }

    fn agent(&self, config: &Path) -> Command {
        let mut command = self.netns.command(agent_binary()).unwrap();
        command.arg("agent").arg("--config").arg(config);
        command
    }

    /// A pod namespace with its veth and the node's /32 route to it.
    fn pod_network(&self, ip: Ipv4Addr) -> Netns {
        let pod = Netns::create(&format!("{}-pod", self.name)).unwrap();
        pod.ip(&format!(
            "link add eth0 netns {} type veth peer name lxc1 netns {}",
            pod.name(),
            self.netns.name()
        ))
        .unwrap();
        pod.ip(&format!("addr add {ip}/32 dev eth0")).unwrap();
        pod.ip("link set eth0 up").unwrap();
        self.netns.ip("link set lxc1 up").unwrap();
        self.netns
            .ip(&format!("route add {ip}/32 dev lxc1 scope link"))
            .unwrap();
        pod
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.pin_dir());
    }
}

const NO_ETCD: &str = "http://127.0.0.1:1";

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

fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(timeout);
        let _ = kill(pid, Signal::SIGKILL);
    });
    let output = child.wait_with_output().unwrap();
    drop(watchdog);
    output
}

#[test]
fn a_bad_config_is_one_sentence_and_changes_nothing() {
    let scratch = Scratch::new();
    let config = scratch.config(NO_ETCD, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "pod-cidrs: [10.9.0.0/16]",
        "pod-cidrs: [10.9.0.0/16, 10.9.8.0/24]",
    );
    std::fs::write(&config, text).unwrap();
    let output = scratch.agent(&config).output().unwrap();
    assert_one_clear_line(
        &output,
        "cluster.pod-cidrs[1] 10.9.8.0/24 overlaps 10.9.0.0/16",
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
fn a_missing_manifests_directory_is_named() {
    let scratch = Scratch::new();
    let config = scratch.config(NO_ETCD, "");
    std::fs::remove_dir_all(scratch.dir.join("manifests")).unwrap();
    let output = scratch.agent(&config).output().unwrap();
    assert_one_clear_line(
        &output,
        "does not exist or is not a directory; create it or fix source.directory",
    );
    assert!(!Path::new(&scratch.pin_dir()).exists(), "nothing loaded");
}

#[test]
fn missing_privileges_are_named() {
    let scratch = Scratch::new();
    let config = scratch.config(NO_ETCD, "");
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
fn a_tunnel_name_taken_by_another_device_is_refused() {
    let scratch = Scratch::new();
    scratch
        .netns
        .ip("link add fleetnet_vxlan type veth peer name other")
        .unwrap();
    let output = scratch
        .agent(&scratch.config(NO_ETCD, ""))
        .output()
        .unwrap();
    assert_one_clear_line(
        &output,
        "interface fleetnet_vxlan exists but is not a VXLAN collect_md",
    );
}

#[test]
fn a_cluster_id_claimed_by_another_cluster_stops_the_agent() {
    let scratch = Scratch::new();
    let etcd = Etcd::start_in(&scratch.netns, Ipv4Addr::LOCALHOST).unwrap();
    let put = scratch
        .netns
        .command("etcdctl")
        .unwrap()
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "put",
            "/fleetnet/v1/cluster-ids/9",
            "other",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let output = run_with_timeout(
        scratch.agent(&scratch.config(&etcd.endpoint(), "")),
        Duration::from_secs(30),
    );
    assert_one_clear_line(
        &output,
        "cluster id 9 is already claimed by cluster other; give cluster c9 an unused id",
    );
}

/// etcd is unreachable, and the pod's network appears only after the agent
/// started: the agent keeps running and attaches the pod when it can.
#[test]
fn a_late_pod_is_attached_even_while_etcd_is_unreachable() {
    let scratch = Scratch::new();
    let ip = Ipv4Addr::new(10, 9, 1, 5);
    std::fs::write(
        scratch.dir.join("manifests/pod.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: web, namespace: default }}\n\
             spec: {{ nodeName: n1, containers: [ {{ name: c, image: i }} ] }}\nstatus: {{ podIP: {ip} }}\n"
        ),
    )
    .unwrap();
    let mut agent = scratch
        .agent(&scratch.config(NO_ETCD, ""))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let maps = found_within(Duration::from_secs(15), || {
        DatapathMaps::open_pinned(Path::new(&scratch.pin_dir())).ok()
    })
    .expect("the agent loaded its maps");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        maps.endpoints().unwrap().is_empty(),
        "attached without a network"
    );
    assert!(
        matches!(agent.try_wait(), Ok(None)),
        "the agent gave up waiting"
    );

    let _pod = scratch.pod_network(ip);
    let attached = found_within(Duration::from_secs(5), || {
        maps.endpoints().unwrap().get(&ip.octets()).copied()
    });
    stop(&mut agent);
    let endpoint = attached.expect("the pod was attached once its route appeared");
    assert_eq!(
        endpoint.identity,
        identity::INIT,
        "no identity without etcd yet"
    );
    let local = maps.ipcache().unwrap();
    assert!(
        local.contains_key(&"10.9.1.0/24".parse().unwrap()),
        "the node's pod CIDR is local"
    );
}

/// With --keep-pins the maps outlive the agent; the next agent reuses them
/// and removes what no longer belongs (here: an entry planted in between).
/// The BPF root is a fresh directory, so the agent must mount bpffs itself.
#[test]
fn kept_pins_are_reused_and_reconciled_and_bpffs_is_mounted_when_missing() {
    let scratch = Scratch::new();
    let etcd = Etcd::start_in(&scratch.netns, Ipv4Addr::LOCALHOST).unwrap();
    let root = scratch.dir.join("bpf");
    let pin_dir = root.join("node");
    let bpf = format!(
        "bpf: {{ root: {}, pin-dir: {}, ipcache-max-entries: 1024 }}\n",
        root.display(),
        pin_dir.display()
    );
    let config = scratch.config(&etcd.endpoint(), &bpf);
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

fn stop(agent: &mut Child) {
    let _ = kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM);
    let _ = agent.wait();
}

/// What `probe` finds, looked for every 50 ms; None after `timeout`.
fn found_within<T>(timeout: Duration, probe: impl Fn() -> Option<T>) -> Option<T> {
    fleetnet_testing::poll(timeout, fleetnet_testing::POLL_EVERY, probe).map(|(value, _)| value)
}
