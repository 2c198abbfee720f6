//! A real Prometheus server (Debian's `prometheus`) inside a namespace of
//! the fleet, scraping agents every second, and its HTTP query API.

use std::{
    fs,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    sync::Mutex,
    time::Duration,
};

use serde_json::Value;

use crate::{fleet_in_a_box::unique_name, netns::Netns};

/// A series' points: Unix seconds and value.
pub type Points = Vec<(f64, f64)>;

pub struct Prometheus {
    listen: SocketAddr,
    netns_path: PathBuf,
    dir: PathBuf,
    child: Mutex<Child>,
}

impl Prometheus {
    /// Starts Prometheus in `netns`, listening on `listen`, scraping
    /// `/metrics` of `targets` every second. Returns once it is ready.
    pub fn start_in(netns: &Netns, listen: SocketAddr, targets: &[SocketAddr]) -> io::Result<Self> {
        let targets: Vec<(SocketAddr, Vec<(&str, &str)>)> =
            targets.iter().map(|t| (*t, Vec::new())).collect();
        Self::start_labelled(netns, listen, &targets)
    }

    /// [`Prometheus::start_in`], each target with labels of its own (a
    /// `cluster` label, as a scrape configuration's relabeling gives it).
    pub fn start_labelled(
        netns: &Netns,
        listen: SocketAddr,
        targets: &[(SocketAddr, Vec<(&str, &str)>)],
    ) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("fleetnet-prometheus-{}", unique_name()));
        fs::create_dir_all(&dir)?;
        let targets: Vec<String> = targets
            .iter()
            .map(|(target, labels)| {
                let labels: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
                format!(
                    "{{ targets: ['{target}'], labels: {{ {} }} }}",
                    labels.join(", ")
                )
            })
            .collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 900ms }}\n\
             scrape_configs:\n  - job_name: fleetnet\n    static_configs: [ {} ]\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = netns
            .command("prometheus")?
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let prometheus = Self {
            listen,
            netns_path: netns.path(),
            dir,
            child: Mutex::new(child),
        };
        let ready = crate::poll(Duration::from_secs(30), Duration::from_millis(100), || {
            prometheus
                .get("/-/ready")
                .is_ok_and(|body| body.contains("Ready"))
                .then_some(())
        });
        match ready {
            Some(_) => Ok(prometheus),
            None => Err(io::Error::other(format!(
                "Prometheus not ready after 30 s; its log:\n{}",
                prometheus.log()
            ))),
        }
    }

    /// Runs an instant query; returns each series' labels and value.
    pub fn query(&self, promql: &str) -> io::Result<Vec<(Value, f64)>> {
        let series = self.api(&format!("/api/v1/query?query={}", encode(promql)), promql)?;
        Ok(series
            .into_iter()
            .filter_map(|s| {
                let value = s["value"][1].as_str()?.parse().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect())
    }

    /// Runs a range query over the last `seconds`, a point every `step`
    /// seconds; returns each series' labels and points (Unix seconds,
    /// value). Prometheus refusing the query is an error.
    pub fn query_range(
        &self,
        promql: &str,
        seconds: u64,
        step: u64,
    ) -> io::Result<Vec<(Value, Points)>> {
        let end = fleetnet_store::time::unix_now();
        let path = format!(
            "/api/v1/query_range?query={}&start={:.3}&end={end:.3}&step={step}",
            encode(promql),
            end - seconds as f64,
        );
        let series = self.api(&path, promql)?;
        Ok(series
            .into_iter()
            .map(|s| {
                let points = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|point| {
                        Some((point[0].as_f64()?, point[1].as_str()?.parse().ok()?))
                    })
                    .collect();
                (s["metric"].clone(), points)
            })
            .collect())
    }

    /// The `result` of an API answer, or why Prometheus refused `promql`.
    fn api(&self, path: &str, promql: &str) -> io::Result<Vec<Value>> {
        let body = self.get(path)?;
        let answer: Value = serde_json::from_str(&body).map_err(io::Error::other)?;
        if answer["status"] != "success" {
            return Err(io::Error::other(format!("query {promql}: {answer}")));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Stops the server (SIGKILL): it no longer answers.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` from inside the namespace; the body.
    fn get(&self, path: &str) -> io::Result<String> {
        let (listen, netns) = (self.listen, self.netns_path.clone());
        let path = path.to_string();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = fs::File::open(&netns)?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    let mut stream = TcpStream::connect_timeout(&listen, Duration::from_secs(2))?;
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    write!(stream, "GET {path} HTTP/1.0\r\nHost: {listen}\r\n\r\n")?;
                    let mut response = String::new();
                    stream.read_to_string(&mut response)?;
                    Ok(response
                        .split_once("\r\n\r\n")
                        .map(|(_, body)| body.to_string())
                        .unwrap_or_default())
                })
                .join()
                .map_err(|_| io::Error::other("query thread panicked"))?
        })
    }
}

/// `text` as a URL query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
