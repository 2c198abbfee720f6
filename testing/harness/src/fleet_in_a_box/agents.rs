//! The agents: one `fleetnet agent` process per node, started, stopped,
//! killed, asked over HTTP, and their logs.

use std::{
    fs, io,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use dataplane_common::{ServiceKey, service::PROTO_TCP};
use fleetnet_agent::datapath::DatapathMaps;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::*;
use crate::http::{http_get, metric_value};

impl FleetInABox {
    /// Starts every node's agent and waits until each says it is ready.
    pub fn start_agents(&self) -> io::Result<()> {
        let binary = agent_binary();
        for node in &self.nodes {
            node.start_agent(&binary)?;
        }
        for node in &self.nodes {
            node.wait_ready(Duration::from_secs(60))?;
        }
        Ok(())
    }

    /// Stops every agent with SIGTERM; fails if one does not exit cleanly.
    pub fn stop_agents(&self) -> io::Result<()> {
        let mut failures = Vec::new();
        for node in &self.nodes {
            if let Err(error) = node.stop_agent() {
                failures.push(error.to_string());
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(failures.join("; ")))
        }
    }
}

impl Node {
    /// Where the agent serves metrics, status and flows (in the node's
    /// namespace).
    pub fn metrics_address(&self) -> SocketAddr {
        SocketAddr::from((self.ip, METRICS_PORT))
    }

    /// The body of the agent's `/metrics`.
    pub fn metrics_text(&self) -> io::Result<String> {
        http_get(&self.netns, self.metrics_address(), "/metrics")
    }

    /// The value of the metric line starting with `series` (name and
    /// labels exactly as exposed), if present.
    pub fn metric(&self, series: &str) -> io::Result<Option<f64>> {
        Ok(metric_value(&self.metrics_text()?, series))
    }

    /// `fleetnet observe -o json <filters>` against this node's agent: the
    /// flows it prints.
    pub fn observe(
        &self,
        filters: &[&str],
    ) -> io::Result<Vec<fleetnet_agent::observe::flows::FlowRecord>> {
        let mut args = vec!["observe", "-o", "json", "--last", "100000"];
        args.extend_from_slice(filters);
        let output = self.fleetnet(&args)?;
        if !output.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).map_err(io::Error::other))
            .collect()
    }

    /// `fleetnet <args> --server <this node's agent>`, run inside the node's
    /// namespace.
    pub fn fleetnet(&self, args: &[&str]) -> io::Result<std::process::Output> {
        self.netns
            .command(agent_binary())?
            .args(args)
            .arg("--server")
            .arg(self.metrics_address().to_string())
            .output()
    }

    /// Changes this node's agent config (read at its next start).
    pub fn edit_config(&self, edit: impl FnOnce(&mut serde_yaml::Value)) -> io::Result<()> {
        let text = fs::read_to_string(&self.config_path)?;
        let mut config: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(io::Error::other)?;
        edit(&mut config);
        fs::write(
            &self.config_path,
            serde_yaml::to_string(&config).map_err(io::Error::other)?,
        )
    }

    pub fn start_agent(&self, binary: &Path) -> io::Result<()> {
        self.start_agent_with(binary, &[])
    }

    /// [`Node::start_agent`] with extra arguments (`--keep-pins`).
    pub fn start_agent_with(&self, binary: &Path, extra: &[&str]) -> io::Result<()> {
        self.start_agent_with_env(binary, extra, &[])
    }

    /// [`Node::start_agent_with`] and environment variables.
    pub fn start_agent_with_env(
        &self,
        binary: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> io::Result<()> {
        *self.log_offset.lock().unwrap() = self.log().len();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = self
            .netns
            .command(binary)?
            .args(["agent", "--config"])
            .arg(&self.config_path)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        *self.agent.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Whether the agent started last wrote its ready line.
    pub fn ready_since_start(&self) -> bool {
        let offset = *self.log_offset.lock().unwrap();
        self.log()
            .get(offset..)
            .is_some_and(|run| run.contains(READY_LINE))
    }

    /// Waits for the agent's ready line written after the last start.
    pub fn wait_ready(&self, timeout: Duration) -> io::Result<()> {
        // Restarts append to the same log: only this run's lines count.
        let offset = *self.log_offset.lock().unwrap();
        let ready = crate::try_poll(timeout, Duration::from_millis(20), || {
            if self
                .log()
                .get(offset..)
                .is_some_and(|run| run.contains(READY_LINE))
            {
                return Ok(Some(()));
            }
            let exited = match self.agent.lock().unwrap().as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            match exited {
                Some(status) => {
                    self.agent.lock().unwrap().take();
                    Err(io::Error::other(format!(
                        "agent of {} exited ({status}) before it was ready; its log:\n{}",
                        self.id,
                        self.log()
                    )))
                }
                None => Ok(None),
            }
        })?;
        ready.map(|_| ()).ok_or_else(|| {
            io::Error::other(format!(
                "agent of {} not ready after {timeout:?}; its log:\n{}",
                self.id,
                self.log()
            ))
        })
    }

    /// SIGTERM, then SIGKILL after 10 s; an unclean exit is an error.
    pub fn stop_agent(&self) -> io::Result<()> {
        let Some(child) = self.agent.lock().unwrap().take() else {
            return Ok(());
        };
        terminate(child, &format!("agent of {}", self.id), || self.log())
    }

    /// Kills the agent (SIGKILL): no cleanup, its keys live on until its
    /// lease expires, its pinned maps stay.
    pub fn kill_agent(&self) {
        if let Some(mut child) = self.agent.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.lock().unwrap().as_ref().map(Child::id)
    }

    pub fn agent_running(&self) -> bool {
        self.agent
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The first line of the agent's log telling of a lost lease (its keys
    /// would have left the mesh) or an error.
    pub fn log_trouble(&self) -> Option<String> {
        self.log()
            .lines()
            .find(|line| line.contains("lease expired") || line.contains("ERROR"))
            .map(str::to_string)
    }

    /// Panics, naming the node and the line, if [`Node::log_trouble`]
    /// finds one.
    pub fn assert_untroubled(&self) {
        if let Some(line) = self.log_trouble() {
            panic!("{}: {line}", self.id);
        }
    }

    /// The maps this node's agent pinned.
    pub fn maps(&self) -> DatapathMaps {
        DatapathMaps::open_pinned(&self.pin_dir)
            .unwrap_or_else(|error| panic!("opening {}'s pinned maps: {error}", self.id))
    }

    /// The ready backends this node's datapath has for `vip`, port
    /// SERVICE_PORT/TCP (None: no such frontend).
    pub fn backend_count(&self, vip: Ipv4Addr) -> Option<u16> {
        let key = ServiceKey {
            vip: vip.octets(),
            port: SERVICE_PORT.to_be(),
            protocol: PROTO_TCP,
            _pad: 0,
        };
        let services = self
            .maps()
            .services()
            .unwrap_or_else(|error| panic!("reading {}'s services: {error}", self.id));
        services.get(&key).map(|info| info.backend_count)
    }

    /// Waits until this node serves `vip` with `count` ready backends;
    /// returns how long that took.
    pub fn wait_backends(
        &self,
        vip: Ipv4Addr,
        count: u16,
        timeout: Duration,
    ) -> io::Result<Duration> {
        let mut programmed = None;
        let served = crate::poll(timeout, Duration::from_millis(5), || {
            programmed = self.backend_count(vip);
            (programmed == Some(count)).then_some(())
        });
        served.map(|(_, took)| took).ok_or_else(|| {
            io::Error::other(format!(
                "{} did not serve {vip} with {count} backends within {timeout:?} (it has {programmed:?})",
                self.id
            ))
        })
    }
}

/// SIGTERM, and SIGKILL if the process is still there after 10 s.
pub(super) fn stop_process(pid: Pid) {
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// SIGTERM to `child`, then SIGKILL after 10 s; an unclean exit is an
/// error that shows `log`.
pub(crate) fn terminate(mut child: Child, what: &str, log: impl Fn() -> String) -> io::Result<()> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            return Err(io::Error::other(format!(
                "{what} exited with {status}; its log:\n{}",
                log()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!("{what} ignored SIGTERM for 10 s")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
