//! Leaving a fleet running (`cargo xtask demo --keep`), removing it later,
//! and sweeping what killed runs left behind.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::unistd::Pid;

use super::{agents::stop_process, *};

impl FleetInABox {
    /// Leaves the fleet running after this process exits (`demo --keep`):
    /// records what [`FleetInABox::tear_down_kept`] must remove, and returns how
    /// to look around.
    pub fn keep_running(self) -> io::Result<String> {
        let mut state = format!("name {}\nworkdir {}\n", self.name, self.workdir.display());
        for node in &self.nodes {
            if let Some(child) = node.agent.lock().unwrap().as_ref() {
                state += &format!("pid {}\n", child.id());
            }
        }
        for etcd in self.etcd_members() {
            if let Some(pid) = etcd.pid() {
                state += &format!("pid {pid}\netcd-data {}\n", etcd.data_dir().display());
            }
        }
        fs::write(kept_state_path(), state)?;
        let (_, pod) = self.pods().last().expect("a fleet has pods");
        let first = &self.nodes[0].pods[0];
        let notes = format!(
            "==> the fleet keeps running (agent logs and manifests in {}). Try:\n    \
             ip netns exec {} ping -c 3 {}   # {} -> {}\n    \
             ip netns exec {} etcdctl --endpoints {} get --prefix /fleetnet/v1/nodes\n\
             Remove it with `cargo xtask demo --down`.",
            self.workdir.display(),
            first.netns.name(),
            pod.ip,
            first.id,
            pod.id,
            self.underlay.name(),
            self.etcd.endpoint(),
        );
        // Nothing may be cleaned up now: no Drop for the fleet, its
        // namespaces, etcd or its agent handles.
        std::mem::forget(self);
        Ok(notes)
    }

    /// Removes a fleet left running by [`FleetInABox::keep_running`].
    pub fn tear_down_kept() -> io::Result<String> {
        let path = kept_state_path();
        let state = fs::read_to_string(&path).map_err(|_| {
            io::Error::other("no demo fleet is running (nothing was kept with --keep)")
        })?;
        let mut name = None;
        for line in state.lines() {
            match line.split_once(' ') {
                Some(("name", value)) => name = Some(value.to_string()),
                Some(("workdir" | "etcd-data", value)) => {
                    let _ = fs::remove_dir_all(value);
                }
                Some(("pid", value)) => {
                    if let Ok(pid) = value.parse::<i32>() {
                        stop_process(Pid::from_raw(pid));
                    }
                }
                _ => {}
            }
        }
        let name =
            name.ok_or_else(|| io::Error::other(format!("{} names no fleet", path.display())))?;
        let prefix = format!("{name}-");
        let mut removed = 0;
        for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let netns = entry.file_name().to_string_lossy().into_owned();
            if netns.starts_with(&prefix) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &netns])
                    .output();
                removed += 1;
            }
        }
        for entry in fs::read_dir(BPF_DIR).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = remove_pins(&entry.path());
            }
        }
        fs::remove_file(&path)?;
        Ok(format!("==> fleet {name} removed ({removed} namespaces)"))
    }
}

/// Removes a node's pins: maps, and links (which detaches them).
pub(super) fn remove_pins(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn kept_state_path() -> PathBuf {
    std::env::temp_dir().join("fleetnet-demo.state")
}

/// The fleet a `demo --keep` left running: its process is gone on purpose,
/// so sweeps must leave it alone.
pub(super) fn kept_fleet_name() -> Option<String> {
    let state = fs::read_to_string(kept_state_path()).ok()?;
    state
        .lines()
        .find_map(|line| line.strip_prefix("name ").map(str::to_string))
}

/// Removes pin directories of harness runs whose process is gone, except
/// those of the `kept` fleet.
pub(super) fn sweep_stale_pins(kept: Option<&str>) {
    let Ok(entries) = fs::read_dir(BPF_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if netns::is_stale(NAME_PREFIX, &name, kept) {
            let _ = remove_pins(&entry.path());
        }
    }
}
