//! Rollouts on the fleet-in-a-box: the `fleetnet fleet` / `fleetnet
//! rollout` commands and fleet controllers, run in the underlay namespace
//! next to etcd.

use std::{
    fs,
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Output, Stdio},
    sync::Mutex,
};

use fleetnet_fleet::model::{self, Report, Run, Target};
use fleetnet_store::fleet_keys as keys;

use crate::{
    fleet_in_a_box::{ETCD_IP, FleetInABox, agent_binary, terminate},
    http::{http_get, metric_value},
};

/// A `fleetnet fleet controller` process.
pub struct Controller {
    pub name: String,
    /// Where it serves /metrics, on the underlay.
    pub metrics: SocketAddr,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
}

impl FleetInABox {
    /// `fleetnet <args> --etcd <the fleet's etcd>`, from the underlay.
    pub fn fleet_command(&self, args: &[&str]) -> io::Result<Output> {
        self.underlay
            .command(agent_binary())?
            .args(args)
            .args(["--etcd", &self.etcd.endpoint()])
            .output()
    }

    /// [`FleetInABox::fleet_command`] that must succeed: its stdout.
    pub fn fleet_command_ok(&self, args: &[&str]) -> io::Result<String> {
        let output = self.fleet_command(args)?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "fleetnet {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Writes `yaml` into the fleet's work directory as `name`.
    pub fn write_file(&self, name: &str, yaml: &str) -> io::Result<PathBuf> {
        let path = self.workdir.join(name);
        fs::write(&path, yaml)?;
        Ok(path)
    }

    /// `rollout status RUN -o json`.
    pub fn run_status(&self, run: u64) -> io::Result<Run> {
        let json = self.fleet_command_ok(&["rollout", "status", &run.to_string(), "-o", "json"])?;
        serde_json::from_str(&json).map_err(io::Error::other)
    }

    /// The fleet document at `key`, if there is one.
    fn fleet_document<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let output = self.etcdctl(&["get", key, "--print-value-only"])?;
        let value = output.stdout.trim_ascii_end();
        if value.is_empty() {
            return Ok(None);
        }
        model::decode(value).map(Some).map_err(io::Error::other)
    }

    /// The revision `cluster` targets.
    pub fn fleet_target(&self, cluster: &str) -> io::Result<Option<Target>> {
        self.fleet_document(&keys::target(cluster))
    }

    /// What the agent of `cluster`/`node` reports.
    pub fn fleet_report(&self, cluster: &str, node: &str) -> io::Result<Option<Report>> {
        self.fleet_document(&keys::report(cluster, node))
    }

    /// Starts a controller named `name` serving metrics on `port`.
    pub fn start_controller(&self, name: &str, port: u16) -> io::Result<Controller> {
        let log_path = self.workdir.join(format!("controller-{name}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let metrics = SocketAddr::from((ETCD_IP, port));
        let child = self
            .underlay
            .command(agent_binary())?
            .args(["fleet", "controller", "--etcd", &self.etcd.endpoint()])
            .args(["--name", name, "--metrics", &metrics.to_string()])
            .args(["--lease-ttl-seconds", "3", "--interval-ms", "200"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Controller {
            name: name.to_string(),
            metrics,
            log_path,
            child: Mutex::new(Some(child)),
        })
    }

    /// The controller's /metrics.
    pub fn controller_metrics(&self, controller: &Controller) -> io::Result<String> {
        http_get(&self.underlay, controller.metrics, "/metrics")
    }

    /// One series of the controller's /metrics (name and labels exactly as
    /// exposed).
    pub fn controller_metric(&self, controller: &Controller, series: &str) -> Option<f64> {
        metric_value(&self.controller_metrics(controller).ok()?, series)
    }
}

impl Controller {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: no hand-over, the key lives until its lease expires.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; an unclean or slow exit is an error.
    pub fn stop(&self) -> io::Result<()> {
        let Some(child) = self.child.lock().unwrap().take() else {
            return Ok(());
        };
        terminate(child, &format!("controller {}", self.name), || self.log())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(
                io::stderr(),
                "controller {} log:\n{}",
                self.name,
                self.log()
            );
        }
        self.kill();
    }
}
