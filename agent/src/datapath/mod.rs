//! The eBPF datapath as the agent sees it: load the object, pin its maps
//! under the node's pin directory ([`bpffs`]), attach programs with TCX
//! (pinned links that an agent restart takes over), the typed maps, and
//! the programmers that keep each map equal to what the agent wants
//! ([`programmers`]). The node's interfaces are read and made through
//! [`netlink`].

pub mod bpffs;
mod carry;
pub use carry::WideServiceKey;
pub mod clock;
mod links;
mod maps;
pub mod netlink;
mod pins;
pub mod programmers;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader, VerifierLogLevel,
    programs::{ProgramError, SchedClassifier, TcAttachType},
};
use dataplane_common::maps as names;

pub use self::maps::{
    CounterMaps, DatapathMaps, EventReader, MapAccessError, Swept, sweep_conntrack,
};

/// What VXLAN over IPv4 adds to a pod's packet on the underlay: the outer
/// IPv4 (20), UDP (8) and VXLAN (8) headers and the inner Ethernet header
/// (14). The outer Ethernet header is not part of the MTU.
pub const VXLAN_OVERHEAD: u16 = 50;

/// Map capacities, set at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub ipcache: u32,
    pub endpoints: u32,
    pub metrics: u32,
    pub services: u32,
    pub backends: u32,
    pub conntrack: u32,
    /// Slots per service in the Maglev table (a prime).
    pub maglev_table_size: u32,
    /// Service ids 1..=this get a Maglev slice.
    pub max_service_ids: u32,
    pub policy: u32,
}

impl MapSizes {
    /// Entries of the flat Maglev array.
    pub fn maglev_entries(&self) -> u32 {
        (self.max_service_ids + 1) * self.maglev_table_size
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            ipcache: names::IPCACHE_MAX_ENTRIES,
            endpoints: names::ENDPOINTS_MAX_ENTRIES,
            metrics: names::METRICS_MAX_ENTRIES,
            services: names::SERVICES_MAX_ENTRIES,
            backends: names::BACKENDS_MAX_ENTRIES,
            conntrack: names::CONNTRACK_MAX_ENTRIES,
            maglev_table_size: names::MAGLEV_TABLE_SIZE,
            max_service_ids: names::MAX_SERVICE_IDS,
            policy: names::POLICY_MAX_ENTRIES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the kernel refused to load the eBPF object: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error(
        "the kernel's verifier rejected eBPF program {program}; \
         rerun with RUST_LOG=debug to see the verifier log"
    )]
    Verifier {
        program: String,
        /// The verifier's own explanation, logged at debug level.
        log: String,
    },
    #[error("eBPF program {program} could not be loaded: {source}")]
    Program {
        program: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot attach {program} to interface {interface}: {source}")]
    Attach {
        program: String,
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("the eBPF object has no program named {0}")]
    MissingProgram(String),
    #[error(transparent)]
    Maps(#[from] MapAccessError),
    #[error("cannot clean the pin directory {dir}: {source}")]
    Unpin {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded datapath. With a pin directory, dropping it leaves maps and
/// attached programs in place for the next agent, until
/// [`Datapath::unpin`]; without one, dropping it detaches everything.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: DatapathMaps,
    pin_dir: Option<PathBuf>,
    /// (program, interface index) -> link.
    links: HashMap<(String, u32), links::Attachment>,
}

impl Datapath {
    /// Loads the embedded object with the given map sizes. With a pin
    /// directory, maps already pinned there (by an earlier agent) are reused
    /// when their layout and size still fit, so state survives restarts.
    pub fn load(sizes: MapSizes, pin_dir: Option<&Path>) -> Result<Self, DatapathError> {
        Self::load_object(crate::DATAPATH_OBJECT, sizes, pin_dir)
    }

    /// [`Datapath::load`] with another build of the object.
    pub fn load_object(
        object: &[u8],
        sizes: MapSizes,
        pin_dir: Option<&Path>,
    ) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::IPCACHE, sizes.ipcache)
            .map_max_entries(names::IPCACHE_HOSTS, sizes.ipcache)
            .map_max_entries(names::ENDPOINTS, sizes.endpoints)
            .map_max_entries(names::METRICS, sizes.metrics)
            .map_max_entries(names::SELECTIONS, sizes.metrics)
            .map_max_entries(names::SERVICES, sizes.services)
            .map_max_entries(names::BACKENDS, sizes.backends)
            .map_max_entries(names::CONNTRACK, sizes.conntrack)
            .map_max_entries(names::MAGLEV, sizes.maglev_entries())
            .map_max_entries(names::POLICY, sizes.policy)
            .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS);
        let pin_paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => names::ALL
                .iter()
                .map(|name| (*name, dir.join(name)))
                .collect(),
            None => Vec::new(),
        };
        let mut carried = carry::Carried::default();
        for (name, path) in &pin_paths {
            pins::remove_if_incompatible(name, path, &sizes, &mut carried);
            loader.map_pin_path(name, path.as_path());
        }
        if let Some(dir) = pin_dir {
            links::remove_stale(dir);
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|error| DatapathError::Load(Box::new(error)))?;
        for program in [
            names::PROG_FROM_POD,
            names::PROG_FROM_OVERLAY,
            names::PROG_FROM_UNDERLAY,
            names::PROG_TO_POD,
            names::PROG_FLOOR,
        ] {
            load_program(&mut ebpf, program)?;
        }
        let mut maps = DatapathMaps::take(&mut ebpf)?;
        carried.write(&mut maps);
        Ok(Self {
            ebpf,
            maps,
            pin_dir: pin_dir.map(Path::to_path_buf),
            links: HashMap::new(),
        })
    }

    /// The classifier `name`, loaded (for attaching, or for test runs).
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier, DatapathError> {
        load_program(&mut self.ebpf, name)?;
        classifier(&mut self.ebpf, name)
    }

    /// Attaches `program` with TCX to the interface `name` (index `index`):
    /// at egress for [`names::PROG_TO_POD`], at ingress for the others. A
    /// link an earlier agent left pinned there gets this program swapped
    /// in. Attaching the same pair twice is a no-op.
    pub fn attach(&mut self, program: &str, name: &str, index: u32) -> Result<(), DatapathError> {
        let key = (program.to_string(), index);
        if self.links.contains_key(&key) {
            return Ok(());
        }
        let hook = if program == names::PROG_TO_POD {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        let pin_dir = self.pin_dir.clone();
        let classifier = self.program(program)?;
        let attachment = links::attach(classifier, program, name, index, hook, pin_dir.as_deref())
            .map_err(|source| DatapathError::Attach {
                program: program.into(),
                interface: name.into(),
                source: Box::new(source),
            })?;
        self.links.insert(key, attachment);
        Ok(())
    }

    /// Detaches `program` from interface `index`. An interface that is
    /// already gone took the attachment with it; that is not an error.
    pub fn detach(&mut self, program: &str, index: u32) {
        if let Some(attachment) = self.links.remove(&(program.to_string(), index)) {
            attachment.detach();
        }
    }

    /// Detaches `program` from interface `index` also when an earlier
    /// agent attached it and this one did not take the link over (a
    /// setting that needed it is gone).
    pub fn detach_left_over(&mut self, program: &str, index: u32) {
        self.detach(program, index);
        if let Some(pin_dir) = &self.pin_dir {
            links::remove_pin(pin_dir, program, index);
        }
    }

    /// Interface indexes `program` is attached to.
    pub fn attached(&self, program: &str) -> impl Iterator<Item = u32> {
        self.links
            .keys()
            .filter(move |(name, _)| name == program)
            .map(|(_, index)| *index)
    }

    /// Detaches everything and removes the pinned maps and links and the
    /// pin directory.
    pub fn unpin(self) -> Result<(), DatapathError> {
        let Self {
            ebpf,
            maps,
            pin_dir,
            links,
        } = self;
        for (_, attachment) in links {
            attachment.detach();
        }
        drop(maps);
        drop(ebpf);
        if let Some(dir) = pin_dir {
            links::remove_dir(&dir)
                .and_then(|()| pins::remove_dir(&dir))
                .map_err(|source| DatapathError::Unpin {
                    dir: dir.display().to_string(),
                    source,
                })?;
        }
        Ok(())
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .ok_or_else(|| DatapathError::MissingProgram(name.into()))
}

/// Loads `name` into the kernel unless it already is.
fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<(), DatapathError> {
    let classifier = classifier(ebpf, name)?;
    if classifier.fd().is_ok() {
        return Ok(());
    }
    classifier.load().map_err(|source| match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(program = name, %io_error, "verifier log:\n{log}");
            DatapathError::Verifier {
                program: name.into(),
                log,
            }
        }
        source => DatapathError::Program {
            program: name.into(),
            source: Box::new(source),
        },
    })
}
