//! TCX attachments that outlive the agent. Each link is pinned under the
//! pin directory's `links/` as `<program>@<ifindex>`, so the programs keep
//! running while no agent does (a restart, an upgrade, a crash). The next
//! agent takes each pinned link over and swaps its own program in with one
//! `BPF_LINK_UPDATE`: the hook never runs empty, and established
//! connections lose no packet, as with Cilium's datapath across agent
//! restarts.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
};

/// One program on one interface.
pub(super) struct Attachment {
    link: FdLink,
    /// Where the link is pinned; `None` without a pin directory (the link
    /// then lives as long as the agent).
    pin: Option<PathBuf>,
}

impl Attachment {
    /// Detaches: removes the pin, then the last reference to the link.
    pub(super) fn detach(self) {
        if let Some(pin) = &self.pin {
            let _ = fs::remove_file(pin);
        }
        drop(self.link);
    }
}

/// The directory of link pins under a pin directory.
pub(super) fn dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn pin_path(pin_dir: &Path, program: &str, index: u32) -> PathBuf {
    dir(pin_dir).join(format!("{program}@{index}"))
}

/// Attaches `classifier` (named `program`) at `hook` of interface
/// `name`/`index`: by taking over the link an earlier agent pinned there,
/// else with a new link, pinned when there is a pin directory.
pub(super) fn attach(
    classifier: &mut SchedClassifier,
    program: &str,
    name: &str,
    index: u32,
    hook: TcAttachType,
    pin_dir: Option<&Path>,
) -> Result<Attachment, ProgramError> {
    let Some(pin_dir) = pin_dir else {
        let link = new_link(classifier, name, hook)?;
        return Ok(Attachment { link, pin: None });
    };
    let pin = pin_path(pin_dir, program, index);
    if pin.exists() {
        match take_over(classifier, &pin) {
            Ok(link) => {
                return Ok(Attachment {
                    link,
                    pin: Some(pin),
                });
            }
            // The interface went away with the old link (a new one may
            // have its index), or the pin is not a TCX link: start afresh.
            Err(error) => {
                tracing::debug!(pin = %pin.display(), %error, "pinned link not reusable");
                let _ = fs::remove_file(&pin);
            }
        }
    }
    let link = new_link(classifier, name, hook)?;
    if let Some(parent) = pin.parent() {
        fs::create_dir_all(parent).map_err(ProgramError::IOError)?;
    }
    let pinned = link
        .pin(&pin)
        .map_err(|error| ProgramError::IOError(io::Error::other(error)))?;
    Ok(Attachment {
        link: pinned.into(),
        pin: Some(pin),
    })
}

fn new_link(
    classifier: &mut SchedClassifier,
    name: &str,
    hook: TcAttachType,
) -> Result<FdLink, ProgramError> {
    let id = classifier.attach_with_options(
        name,
        hook,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    owned(classifier, id)
}

/// Swaps `classifier` into the link pinned at `pin`, atomically.
fn take_over(classifier: &mut SchedClassifier, pin: &Path) -> Result<FdLink, ProgramError> {
    let link: FdLink = PinnedLink::from_pin(pin).map_err(link_error)?.into();
    let link = SchedClassifierLink::try_from(link).map_err(link_error)?;
    let id = classifier.attach_to_link(link)?;
    owned(classifier, id)
}

/// The link out of the program's own bookkeeping, so that unloading the
/// program does not detach it.
fn owned(
    classifier: &mut SchedClassifier,
    id: SchedClassifierLinkId,
) -> Result<FdLink, ProgramError> {
    let link = classifier.take_link(id)?;
    FdLink::try_from(link).map_err(link_error)
}

fn link_error(error: LinkError) -> ProgramError {
    ProgramError::IOError(io::Error::other(error))
}

/// Removes the pin of `program`'s link on interface `index`, if any: with
/// no agent holding it, the link is detached.
pub(super) fn remove_pin(pin_dir: &Path, program: &str, index: u32) {
    let _ = fs::remove_file(pin_path(pin_dir, program, index));
}

/// Removes pins of links whose interface no longer exists (a pod deleted
/// while no agent ran): the kernel already detached them.
pub(super) fn remove_stale(pin_dir: &Path) {
    let Ok(entries) = fs::read_dir(dir(pin_dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|name| name.rsplit_once('@'))
            .and_then(|(_, index)| index.parse::<u32>().ok());
        let alive = index.is_some_and(|index| nix::net::if_::if_indextoname(index).is_ok());
        if !alive {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes every link pin and the links directory: what is still attached
/// through them is detached.
pub(super) fn remove_dir(pin_dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir(pin_dir)) {
        for entry in entries.flatten() {
            fs::remove_file(entry.path())?;
        }
    }
    match fs::remove_dir(dir(pin_dir)) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
