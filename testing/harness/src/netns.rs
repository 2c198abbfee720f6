//! Network namespaces the harness creates and always removes (on drop,
//! even when a test panics), plus ways to act inside one: run `ip` there,
//! spawn a process there, or run a closure on a thread that entered it.

use std::{
    fs::File,
    io,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Output},
};

use nix::sched::{CloneFlags, setns};

/// A named network namespace (`ip netns`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> io::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Self { name: name.into() };
        netns.ip("link set lo up")?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another handle on this namespace that never deletes it, for a
    /// thread that must not borrow the owner.
    pub fn alias(&self) -> std::mem::ManuallyDrop<Netns> {
        std::mem::ManuallyDrop::new(Netns {
            name: self.name.clone(),
        })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <netns> <command>` (words split on whitespace) and fails
    /// with its stderr.
    pub fn ip(&self, command: &str) -> io::Result<Output> {
        run(Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(command.split_whitespace()))
    }

    /// Sets a sysctl under /proc/sys inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
    }

    /// The namespace's IPv4 counters (`Ip:` of /proc/net/snmp: `FragCreates`,
    /// `ReasmReqds`, …), by name.
    pub fn ip_counters(&self) -> io::Result<std::collections::BTreeMap<String, u64>> {
        let snmp = self.enter(|| std::fs::read_to_string("/proc/net/snmp"))??;
        let mut ip = snmp.lines().filter(|line| line.starts_with("Ip:"));
        let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
            return Err(io::Error::other("/proc/net/snmp has no Ip: lines"));
        };
        Ok(names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
            .collect())
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets it
    /// creates stay in the namespace when handed back.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let file = File::open(self.path())?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
        })
    }

    /// A command that will run inside the namespace (network only; the
    /// mount namespace is shared, so bpffs pins are visible).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        let file = File::open(self.path())?;
        let mut command = Command::new(program);
        // SAFETY: setns is async-signal-safe; `file` lives in the closure.
        unsafe {
            command
                .pre_exec(move || setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
        }
        Ok(command)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command, turning a non-zero exit into an error carrying stderr.
pub fn run(command: &mut Command) -> io::Result<Output> {
    let output = command.output()?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(io::Error::other(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Deletes namespaces left by harness runs whose process is gone (a
/// killed test cannot clean up after itself), except those of the `kept`
/// fleet. Names look like `<prefix><pid>-…`.
pub fn sweep_stale(prefix: &str, kept: Option<&str>) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale(prefix, &name, kept) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// True for a harness name `<prefix><pid>-…` whose process is gone and
/// that does not belong to the `kept` fleet.
pub fn is_stale(prefix: &str, name: &str, kept: Option<&str>) -> bool {
    if kept.is_some_and(|kept| name.starts_with(&format!("{kept}-"))) {
        return false;
    }
    let pid = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}
