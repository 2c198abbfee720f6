//! Pinned maps from an earlier agent are reused only when they still match
//! what this build expects; otherwise they are replaced (their entries are
//! rebuilt from the control plane, or carried over, see [`super::carry`]),
//! as Cilium does on map layout changes.

use std::{fs, io, path::Path};

use aya::maps::{MapInfo, MapType};
use dataplane_common::{
    Backend, CtEntry, CtKey, EndpointInfo, IpKey, IpcacheEntry, MetricsKey, MetricsValue,
    NodeConfig, PolicyKey, SelectionKey, ServiceInfo, ServiceKey, maps as names,
};

use super::{MapSizes, carry::Carried};

/// (type, key size, value size, capacity) this build expects for `name`.
fn expected(name: &str, sizes: &MapSizes) -> Option<(MapType, usize, usize, u32)> {
    Some(match name {
        // LPM trie keys carry a 4-byte prefix length before the data.
        names::IPCACHE => (
            MapType::LpmTrie,
            4 + size_of::<IpKey>(),
            size_of::<IpcacheEntry>(),
            sizes.ipcache,
        ),
        names::IPCACHE_HOSTS => (MapType::Hash, 4, size_of::<IpcacheEntry>(), sizes.ipcache),
        names::ENDPOINTS => (MapType::Hash, 4, size_of::<EndpointInfo>(), sizes.endpoints),
        names::METRICS => (
            MapType::PerCpuHash,
            size_of::<MetricsKey>(),
            size_of::<MetricsValue>(),
            sizes.metrics,
        ),
        names::NODE_CONFIG => (MapType::Array, 4, size_of::<NodeConfig>(), 1),
        names::SERVICES => (
            MapType::Hash,
            size_of::<ServiceKey>(),
            size_of::<ServiceInfo>(),
            sizes.services,
        ),
        names::BACKENDS => (MapType::Hash, 4, size_of::<Backend>(), sizes.backends),
        names::MAGLEV => (MapType::Array, 4, 4, sizes.maglev_entries()),
        names::POLICY => (
            MapType::LpmTrie,
            4 + size_of::<PolicyKey>(),
            1,
            sizes.policy,
        ),
        names::EVENTS => (MapType::RingBuf, 0, 0, names::EVENTS_BYTES),
        names::EVENTS_LOST => (MapType::PerCpuArray, 4, 8, 1),
        names::SELECTIONS => (
            MapType::PerCpuHash,
            size_of::<SelectionKey>(),
            8,
            sizes.metrics,
        ),
        names::CONNTRACK => (
            MapType::LruHash,
            size_of::<CtKey>(),
            size_of::<CtEntry>(),
            sizes.conntrack,
        ),
        _ => return None,
    })
}

/// Removes the pinned map `name` at `path` when it does not fit this
/// build, having read into `carried` what is carried over.
pub(super) fn remove_if_incompatible(
    name: &str,
    path: &Path,
    sizes: &MapSizes,
    carried: &mut Carried,
) {
    if !path.exists() {
        return;
    }
    let Some((kind, key, value, capacity)) = expected(name, sizes) else {
        return;
    };
    let fits = MapInfo::from_pin(path).is_ok_and(|info| {
        info.map_type().is_ok_and(|t| t == kind)
            && info.key_size() as usize == key
            && info.value_size() as usize == value
            && info.max_entries() == capacity
    });
    if !fits {
        tracing::warn!(
            map = name,
            path = %path.display(),
            "pinned map does not match this build's layout or configured size; replacing it"
        );
        carried.read(name, path);
        if let Err(error) = fs::remove_file(path) {
            tracing::warn!(map = name, %error, "cannot remove the old pinned map");
        }
    }
}

/// Removes every pinned map (and the directory) this datapath owns.
pub(super) fn remove_dir(dir: &Path) -> io::Result<()> {
    for name in names::ALL {
        match fs::remove_file(dir.join(name)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    match fs::remove_dir(dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
