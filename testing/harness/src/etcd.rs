//! A real etcd server (Debian's etcd 3.4) for tests, the demo and the
//! bench: on 127.0.0.1 with free ports, or inside a network namespace on
//! the underlay, alone or as one member of a cluster. Stopped and its data
//! removed on drop.

use std::{
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{fleet_in_a_box::unique_name, netns::Netns};

/// Certificates for an etcd that requires TLS and client certificates.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// A throwaway CA, a server certificate for 127.0.0.1 and a client
    /// certificate, written to `dir` with openssl.
    pub fn generate(dir: &std::path::Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let file = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| -> io::Result<()> {
            crate::netns::run(Command::new("openssl").args(args).current_dir(dir)).map(|_| ())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=fleetnet-test-ca",
                ],
            ]
            .concat(),
        )?;
        for (name, usage) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth
",
            ),
            (
                "client",
                "extendedKeyUsage=clientAuth
",
            ),
        ] {
            fs::write(file(&format!("{name}.ext")), usage)?;
            let (key, csr, cert) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            openssl(
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        &key,
                        "-out",
                        &csr,
                        "-subj",
                        &format!("/CN={name}"),
                    ],
                ]
                .concat(),
            )?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ])?;
        }
        Ok(Self {
            ca: file("ca.crt"),
            server_cert: file("server.crt"),
            server_key: file("server.key"),
            client_cert: file("client.crt"),
            client_key: file("client.key"),
        })
    }
}

pub struct Etcd {
    tls: Option<EtcdTls>,
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// `--initial-cluster`: every member's name and peer URL.
    initial_cluster: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Etcd {
    /// An etcd on 127.0.0.1 (root namespace, loopback only).
    pub fn start_local() -> io::Result<Self> {
        Self::start(free_port()?, free_port()?, None, None)
    }

    /// An etcd on 127.0.0.1 that serves only TLS clients with a certificate
    /// signed by `tls.ca`.
    pub fn start_local_tls(tls: EtcdTls) -> io::Result<Self> {
        Self::start(free_port()?, free_port()?, None, Some(tls))
    }

    /// An etcd listening on `ip` inside `netns` (the fleet's underlay).
    pub fn start_in(netns: &Netns, ip: Ipv4Addr) -> io::Result<Self> {
        let (client, peer) = (SocketAddr::from((ip, 2379)), SocketAddr::from((ip, 2380)));
        Self::start(client, peer, Some(netns.path()), None)
    }

    /// A cluster of etcd members, each listening on its address inside
    /// its namespace; returns once every member is healthy (the cluster
    /// has a leader).
    pub fn start_cluster(members: &[(&Netns, Ipv4Addr)]) -> io::Result<Vec<Self>> {
        let token = unique_name();
        let mut etcds: Vec<Self> = members
            .iter()
            .enumerate()
            .map(|(i, (netns, ip))| {
                let mut etcd = Self::new(
                    SocketAddr::from((*ip, 2379)),
                    SocketAddr::from((*ip, 2380)),
                    Some(netns.path()),
                    None,
                );
                etcd.name = format!("{token}-m{}", i + 1);
                etcd
            })
            .collect();
        let initial_cluster = etcds
            .iter()
            .map(|etcd| format!("{}=http://{}", etcd.name, etcd.peer))
            .collect::<Vec<_>>()
            .join(",");
        for etcd in &mut etcds {
            etcd.initial_cluster = initial_cluster.clone();
            etcd.spawn()?;
        }
        for etcd in &mut etcds {
            etcd.wait_healthy(Duration::from_secs(30))?;
        }
        Ok(etcds)
    }

    fn start(
        client: SocketAddr,
        peer: SocketAddr,
        netns: Option<PathBuf>,
        tls: Option<EtcdTls>,
    ) -> io::Result<Self> {
        let mut etcd = Self::new(client, peer, netns, tls);
        etcd.launch()?;
        Ok(etcd)
    }

    fn new(
        client: SocketAddr,
        peer: SocketAddr,
        netns: Option<PathBuf>,
        tls: Option<EtcdTls>,
    ) -> Self {
        let name = unique_name();
        let data_dir = std::env::temp_dir().join(format!("fleetnet-etcd-{name}"));
        Self {
            tls,
            log_path: data_dir.with_extension("log"),
            initial_cluster: format!("{name}=http://{peer}"),
            name,
            client,
            peer,
            data_dir,
            netns,
            child: None,
        }
    }

    /// This member's name in the cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens for clients.
    pub fn client_address(&self) -> SocketAddr {
        self.client
    }

    /// The URL clients use.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    fn launch(&mut self) -> io::Result<()> {
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(20))
    }

    /// Starts the process (on its data, if it has some) without waiting:
    /// a member of a cluster is healthy only once a quorum runs.
    pub fn spawn(&mut self) -> io::Result<()> {
        let peer = format!("http://{}", self.peer);
        let mut command = match &self.netns {
            Some(path) => {
                let file = fs::File::open(path)?;
                let mut command = Command::new("etcd");
                // SAFETY: setns is async-signal-safe; `file` lives in the closure.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(io::Error::from)
                    });
                }
                command
            }
            None => Command::new("etcd"),
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.initial_cluster_token()])
            // A member returning from a partition does not depose the
            // leader (etcd 3.5's default; docs/operations.md).
            .arg("--pre-vote")
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// The cluster token: the members' common name prefix.
    fn initial_cluster_token(&self) -> String {
        self.initial_cluster
            .split('=')
            .next()
            .unwrap_or(&self.name)
            .to_string()
    }

    /// Waits until the server answers `/health` (it has a leader).
    pub fn wait_healthy(&mut self, timeout: Duration) -> io::Result<()> {
        let healthy = crate::try_poll(timeout, crate::POLL_EVERY, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "etcd exited ({status}): {}",
                    self.log()
                )));
            }
            Ok(self.healthy().then_some(()))
        })?;
        healthy.map(|_| ()).ok_or_else(|| {
            io::Error::other(format!(
                "etcd not healthy after {timeout:?}: {}",
                self.log()
            ))
        })
    }

    pub fn healthy(&self) -> bool {
        if let Some(tls) = &self.tls {
            return Command::new("etcdctl")
                .arg("--endpoints")
                .arg(self.endpoint())
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key)
                .args(["endpoint", "health", "--command-timeout=1s"])
                .env("ETCDCTL_API", "3")
                .output()
                .is_ok_and(|output| output.status.success());
        }
        let check = || -> io::Result<bool> {
            let mut stream = match &self.netns {
                // The root namespace cannot reach the underlay; ask from inside.
                Some(path) => {
                    let path = path.clone();
                    let client = self.client;
                    std::thread::scope(|scope| {
                        scope
                            .spawn(move || {
                                let file = fs::File::open(path)?;
                                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                                TcpStream::connect_timeout(&client, Duration::from_millis(200))
                            })
                            .join()
                            .map_err(|_| io::Error::other("health check thread"))?
                    })?
                }
                None => TcpStream::connect_timeout(&self.client, Duration::from_millis(200))?,
            };
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            write!(stream, "GET /health HTTP/1.0\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response.contains("\"health\":\"true\""))
        };
        check().unwrap_or(false)
    }

    /// Kills the server (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data (after [`Etcd::kill`]).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.freeze(false);
        self.kill();
        let _ = fs::remove_dir_all(&self.data_dir);
        let _ = fs::remove_file(&self.log_path);
    }
}

fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}
