//! The observe API on the fleet-in-a-box: agents serving `/status` and
//! `/flows` over mutual TLS with certificates from the fleet CA, and a
//! `fleetnet relay` in the underlay namespace next to etcd.

use std::{
    fs,
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use crate::{
    fleet_in_a_box::{ETCD_IP, FleetInABox, agent_binary},
    http::http_get,
};

/// Where each agent's observe listener is, on its node's address.
pub const OBSERVE_PORT: u16 = 9965;
/// Where the relay serves, on the underlay.
pub const RELAY_PORT: u16 = 9966;

/// A `fleetnet relay` process.
pub struct Relay {
    pub address: SocketAddr,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
}

impl FleetInABox {
    /// Issues each cluster's agent certificate (`fleetnet fleet ca issue
    /// --cluster`) and gives every node's agent an observe listener with
    /// it. Before the agents start.
    pub fn secure_observe(&self) -> io::Result<()> {
        let mut clusters: Vec<&str> = self.nodes.iter().map(|n| n.cluster.as_str()).collect();
        clusters.dedup();
        for cluster in clusters {
            let out = self.credentials_dir(cluster).display().to_string();
            self.fleet_command_ok(&["fleet", "ca", "issue", "--cluster", cluster, "--out", &out])?;
        }
        for node in &self.nodes {
            let dir = self.credentials_dir(&node.cluster);
            let observe: serde_yaml::Value = serde_yaml::from_str(&format!(
                "{{ forward-sample: {}, relay-listen: '{}:{OBSERVE_PORT}', tls: {{ ca-file: '{ca}', cert-file: '{cert}', key-file: '{key}' }} }}",
                self.spec.forward_sample,
                node.ip,
                ca = dir.join("ca.crt").display(),
                cert = dir.join("tls.crt").display(),
                key = dir.join("tls.key").display(),
            ))
            .map_err(io::Error::other)?;
            node.edit_config(|config| config["observe"] = observe)?;
        }
        Ok(())
    }

    /// Where the certificates of `party` (a cluster's agents, or `relay`)
    /// are written.
    pub fn credentials_dir(&self, party: &str) -> PathBuf {
        self.workdir.join(format!("observe-{party}"))
    }

    /// Issues the relay's certificate and starts `fleetnet relay`, polling
    /// every `interval` seconds.
    pub fn start_relay(&self, interval: f64) -> io::Result<Relay> {
        let dir = self.credentials_dir("relay");
        let out = dir.display().to_string();
        self.fleet_command_ok(&["fleet", "ca", "issue", "--relay", "--out", &out])?;
        let log_path = self.workdir.join("relay.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let address = SocketAddr::from((ETCD_IP, RELAY_PORT));
        let child = self
            .underlay
            .command(agent_binary())?
            .args(["relay", "--etcd", &self.etcd.endpoint()])
            .args(["--listen", &address.to_string()])
            .args(["--agent-port", &OBSERVE_PORT.to_string()])
            .args(["--interval", &interval.to_string()])
            .arg("--tls-ca")
            .arg(dir.join("ca.crt"))
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let relay = Relay {
            address,
            log_path,
            child: Mutex::new(Some(child)),
        };
        crate::wait_for("the relay serves", Duration::from_secs(10), || {
            http_get(&self.underlay, address, "/healthz").is_ok()
        });
        Ok(relay)
    }

    /// `fleetnet <args>` run in the underlay namespace (next to the relay).
    pub fn underlay_command(&self, args: &[&str]) -> io::Result<Output> {
        self.underlay.command(agent_binary())?.args(args).output()
    }
}

impl Relay {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(io::stderr(), "relay log:\n{}", self.log());
        }
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
