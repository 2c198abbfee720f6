//! The BPF filesystem where maps are pinned. The agent mounts it when the
//! node has not, as Cilium's agent does.

use std::{io, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "{path} is not a BPF filesystem and mounting one there failed ({source}); \
         mount it with `mount -t bpf bpf {path}`"
    )]
    Mount { path: String, source: nix::Error },
    #[error("cannot create the pin directory {path}: {source}")]
    CreateDir { path: String, source: io::Error },
}

/// Makes sure `root` is a mounted bpffs and `pin_dir` (inside it) exists.
pub fn ensure(root: &Path, pin_dir: &Path) -> Result<(), BpffsError> {
    if !is_bpffs(root) {
        std::fs::create_dir_all(root).map_err(|source| BpffsError::CreateDir {
            path: root.display().to_string(),
            source,
        })?;
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| BpffsError::Mount {
            path: root.display().to_string(),
            source,
        })?;
    }
    std::fs::create_dir_all(pin_dir).map_err(|source| BpffsError::CreateDir {
        path: pin_dir.display().to_string(),
        source,
    })
}

pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}
