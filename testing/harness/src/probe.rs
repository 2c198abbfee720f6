//! Traffic between pods of the fleet: ICMP echo, a TCP exchange with an
//! echo server, UDP datagrams, and raw Ethernet frames. Sockets are created
//! inside the pod's namespace and used from ordinary threads.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{capture::set_receive_timeout, netns::Netns, packet::internet_checksum};

/// Sends one ICMP echo request from inside `netns` and waits for the reply.
pub fn ping(netns: &Netns, destination: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    icmp_echo(
        netns.enter(|| raw_icmp_socket(timeout))??,
        destination,
        timeout,
    )
}

/// [`ping`] from the namespace at `path` ([`Netns::path`]): for threads
/// that cannot borrow the pod while the fleet changes.
pub fn ping_at(path: &Path, destination: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    let file = std::fs::File::open(path)?;
    let socket = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                raw_icmp_socket(timeout)
            })
            .join()
            .map_err(|_| io::Error::other("ping thread panicked"))?
    })?;
    icmp_echo(socket, destination, timeout)
}

/// One echo request on `socket` (a raw ICMP socket) and its reply.
fn icmp_echo(socket: OwnedFd, destination: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    let id = (std::process::id() as u16) ^ (u32::from(destination) as u16);
    let mut request = vec![8, 0, 0, 0];
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&1u16.to_be_bytes());
    request.extend_from_slice(b"fleetnet-ping");
    let checksum = internet_checksum(&request);
    request[2..4].copy_from_slice(&checksum.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(destination).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: buffer and address are valid for the sizes given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 1500];
    while Instant::now() < deadline {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n <= 0 {
            continue;
        }
        let packet = &buffer[..n as usize];
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let Some(icmp) = packet.get(header_len..header_len + 8) else {
            continue;
        };
        let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && source == destination {
            return Ok(true);
        }
    }
    Ok(false)
}

fn raw_icmp_socket(timeout: Duration) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_receive_timeout(&socket, timeout.min(Duration::from_millis(100)))?;
    Ok(socket)
}

/// A TCP echo server inside a namespace: every connection gets back what
/// it sends, prefixed with the server's name.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(netns: &Netns, address: SocketAddr, name: &str) -> io::Result<Self> {
        let listener = netns.enter(|| TcpListener::bind(address))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_string();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let name = name.clone();
                            std::thread::spawn(move || echo(stream, &name));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers every message on the connection until the client closes it.
fn echo(mut stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buffer = [0u8; 256];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            return;
        }
        let mut reply = format!("{name}:").into_bytes();
        reply.extend_from_slice(&buffer[..n]);
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Connects from inside `netns` to an [`EchoServer`], sends `message`, and
/// returns the reply.
pub fn tcp_exchange(
    netns: &Netns,
    server: SocketAddr,
    message: &str,
    timeout: Duration,
) -> io::Result<String> {
    let mut stream = netns.enter(|| TcpStream::connect_timeout(&server, timeout))??;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(message.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// One long-lived connection to an [`EchoServer`], asked again and again.
pub struct Conversation {
    stream: TcpStream,
}

impl Conversation {
    pub fn open(netns: &Netns, server: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = netns.enter(|| TcpStream::connect_timeout(&server, timeout))??;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Self { stream })
    }

    /// Sends `message` and returns the one reply to it.
    pub fn ask(&mut self, message: &str) -> io::Result<String> {
        self.stream.write_all(message.as_bytes())?;
        let mut buffer = [0u8; 256];
        let n = self.stream.read(&mut buffer)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection",
            ));
        }
        Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }
}

/// A UDP socket bound inside a namespace.
pub fn udp_socket(netns: &Netns, address: SocketAddr, timeout: Duration) -> io::Result<UdpSocket> {
    let socket = netns.enter(|| UdpSocket::bind(address))??;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket)
}

/// Sends one raw Ethernet frame out of `interface` inside `netns`, the way
/// a misbehaving pod could.
pub fn send_raw_frame(netns: &Netns, interface: &str, frame: &[u8]) -> io::Result<()> {
    let interface = interface.to_string();
    let frame = frame.to_vec();
    netns.enter(move || {
        let index = nix::net::if_::if_nametoindex(interface.as_str()).map_err(io::Error::from)?;
        // SAFETY: plain socket creation; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = index as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the sizes given.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })?
}
