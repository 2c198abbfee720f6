//! Request/response load between pods, like netperf's TCP_RR and TCP_CRR:
//! one byte each way, either over one persistent connection or over a new
//! connection per transaction.
//!
//! Connect-per-request closes each connection with a reset (SO_LINGER 0),
//! so neither the client's ports nor conntrack entries pile up in
//! TIME_WAIT: the rate measured is that of the path, not of port reuse.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use nix::sys::socket::{setsockopt, sockopt};

use crate::netns::Netns;

/// How each transaction gets its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// One connection for all transactions (TCP_RR).
    Persistent,
    /// A new connection per transaction (TCP_CRR).
    PerRequest,
}

/// A one-byte echo server on a port of a pod, until dropped.
pub struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(netns: &Netns, port: u16) -> io::Result<Self> {
        let listener = netns.enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))??;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a non-blocking listener");
                tokio::select! {
                    () = accept(listener) => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

async fn accept(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(echo(stream));
    }
}

/// Answers every byte with one byte until the client closes or resets.
async fn echo(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut byte = [0u8; 1];
    while matches!(stream.read(&mut byte).await, Ok(1)) {
        if stream.write_all(&byte).await.is_err() {
            return;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a run of transactions measured.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    /// The 99th percentile of one transaction's time, in microseconds.
    pub p99_micros: f64,
    /// The longest transaction, in microseconds: a stall of the path.
    pub max_micros: f64,
    /// Transactions that failed (a connect or a reply timing out after
    /// 2 s); their time counts against the rate, and 10 end the run.
    pub failed: u64,
}

/// After this many failures the run stops early: the path is broken, and
/// what was measured so far (a rate near zero) is the result.
const MAX_FAILURES: u64 = 10;

/// Runs transactions from `netns` to `to` back to back for `duration`.
pub fn transactions(
    netns: &Netns,
    to: SocketAddrV4,
    connection: Connection,
    duration: Duration,
) -> io::Result<Rate> {
    let started = Instant::now();
    transactions_while(netns, to, connection, || started.elapsed() < duration)
}

/// Runs transactions from `netns` to `to` back to back while `going`.
pub fn transactions_while(
    netns: &Netns,
    to: SocketAddrV4,
    connection: Connection,
    going: impl Fn() -> bool + Sync,
) -> io::Result<Rate> {
    netns.enter(|| {
        let mut times = Vec::new();
        let mut persistent = None;
        let mut failed = 0;
        let started = Instant::now();
        while going() {
            let begun = Instant::now();
            let stream = match persistent.take() {
                Some(stream) => Ok(stream),
                None => connect(to),
            };
            let stream = match stream.and_then(transact) {
                Ok(stream) => stream,
                Err(error) => {
                    failed += 1;
                    eprintln!("a transaction with {to} failed ({error})");
                    if failed == MAX_FAILURES {
                        break;
                    }
                    continue;
                }
            };
            if connection == Connection::Persistent {
                persistent = Some(stream);
            } else {
                // A reset, not a FIN: no TIME_WAIT on either side.
                setsockopt(
                    &stream,
                    sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                )?;
            }
            times.push(begun.elapsed());
        }
        let elapsed = started.elapsed();
        times.sort();
        let p99 = times.get(times.len() * 99 / 100);
        Ok(Rate {
            per_second: times.len() as f64 / elapsed.as_secs_f64(),
            p99_micros: p99.map_or(f64::NAN, |p99| p99.as_secs_f64() * 1e6),
            max_micros: times.last().map_or(f64::NAN, |max| max.as_secs_f64() * 1e6),
            failed,
        })
    })?
}

fn connect(to: SocketAddrV4) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))
        .map_err(|error| io::Error::other(format!("cannot connect to {to}: {error}")))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

fn transact(mut stream: TcpStream) -> io::Result<TcpStream> {
    let mut byte = [7u8];
    stream.write_all(&byte)?;
    stream.read_exact(&mut byte)?;
    Ok(stream)
}
