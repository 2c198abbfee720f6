//! Captures IPv4 packets on every interface of a namespace (the underlay)
//! with an AF_PACKET socket, to prove which packets crossed the tunnel,
//! with which VNI and between which nodes, and which crossed natively,
//! unencapsulated.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{
    netns::Netns,
    packet::{ParsedIpv4, VxlanPacket, parse_ipv4, parse_vxlan},
};

pub struct Capture {
    stop: Arc<AtomicBool>,
    packets: Arc<Mutex<Captured>>,
    thread: Option<JoinHandle<()>>,
}

/// What a capture saw, each packet once per interface it crossed.
#[derive(Debug, Default)]
pub struct Captured {
    /// VXLAN to the capture's port.
    pub tunnelled: Vec<VxlanPacket>,
    /// Every other IPv4 packet.
    pub plain: Vec<ParsedIpv4>,
}

impl Capture {
    /// Starts capturing in `netns`, telling VXLAN to `port` apart.
    pub fn start(netns: &Netns, port: u16) -> io::Result<Self> {
        let socket = netns.enter(open_packet_socket)??;
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Captured::default()));
        let thread = {
            let stop = stop.clone();
            let packets = packets.clone();
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65536];
                loop {
                    // SAFETY: the buffer is valid for its length.
                    let n = unsafe {
                        libc::recv(
                            socket.as_raw_fd(),
                            buffer.as_mut_ptr().cast(),
                            buffer.len(),
                            0,
                        )
                    };
                    if n > 0 {
                        let frame = &buffer[..n as usize];
                        if let Some(packet) = parse_vxlan(frame, port) {
                            packets.lock().unwrap().tunnelled.push(packet);
                        } else if let Some(packet) = parse_ipv4(frame) {
                            packets.lock().unwrap().plain.push(packet);
                        }
                    } else if stop.load(Ordering::Relaxed) {
                        // Stopped and the queue is drained (the receive timed out).
                        break;
                    }
                }
            })
        };
        Ok(Self {
            stop,
            packets,
            thread: Some(thread),
        })
    }

    /// Stops and returns what was seen.
    pub fn finish(mut self) -> Captured {
        self.halt();
        std::mem::take(&mut self.packets.lock().unwrap())
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

fn open_packet_socket() -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket creation; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_receive_timeout(&socket, Duration::from_millis(50))?;
    // The default queue (about 200 KiB, a hundred frames) overflows when
    // the reader thread waits for a busy CPU while every pod pair sends at
    // once, and the kernel drops what the capture was there to see.
    let bytes: libc::c_int = 64 << 20;
    set_socket_option(&socket, libc::SO_RCVBUFFORCE, &bytes)?;
    Ok(socket)
}

pub(crate) fn set_receive_timeout(socket: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    set_socket_option(socket, libc::SO_RCVTIMEO, &tv)
}

/// Sets the `SOL_SOCKET` option `option` to `value`.
fn set_socket_option<T>(socket: &OwnedFd, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value outlives the call and has the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
