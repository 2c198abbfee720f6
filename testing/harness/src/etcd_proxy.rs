//! An `etcd grpc-proxy`, as each cluster's manifests deploy one in front
//! of the shared etcd: it opens one upstream watch per distinct key range
//! and fans its events out to every client watching that range.

use std::{
    io,
    net::{SocketAddr, TcpStream},
    process::{Child, Stdio},
    time::Duration,
};

use crate::netns::Netns;

pub struct GrpcProxy {
    child: Child,
    listen: SocketAddr,
}

impl GrpcProxy {
    /// Starts a proxy in `netns`, listening on `listen`, for the etcd at
    /// `upstream` (a client URL); returns once it accepts connections.
    pub fn start_in(netns: &Netns, upstream: &str, listen: SocketAddr) -> io::Result<Self> {
        let upstream = upstream.trim_start_matches("http://");
        let child = netns
            .command("etcd")?
            .args(["grpc-proxy", "start", "--endpoints", upstream])
            .args(["--listen-addr", &listen.to_string()])
            .args(["--advertise-client-url", &listen.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut proxy = Self { child, listen };
        let accepting = crate::try_poll(Duration::from_secs(10), crate::POLL_EVERY, || {
            if let Some(status) = proxy.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "etcd grpc-proxy exited: {status}"
                )));
            }
            let connected = netns.enter(move || {
                TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
            })?;
            Ok(connected.then_some(()))
        })?;
        match accepting {
            Some(_) => Ok(proxy),
            None => {
                proxy.stop();
                Err(io::Error::other(
                    "etcd grpc-proxy did not listen within 10 s",
                ))
            }
        }
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
