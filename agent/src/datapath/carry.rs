//! Entries carried over from a pinned map this build replaces into the
//! new one, before any of this build's programs runs. Every packet needs
//! the local endpoints, the ipcache's exact addresses and the service
//! frontends: an empty copy of one of them would drop pods' packets
//! (sources unknown, peers unknown, frontends unknown) until the agent has
//! listed its cluster and the mesh. These three are replaced when their
//! capacity is configured anew, and once when an agent of a release that
//! keyed them wider (a 20-byte `IpKey`; frontends of 24 bytes) is
//! upgraded to 4-byte IPv4 keys (8-byte frontends).

use std::{net::Ipv4Addr, path::Path};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
};
use dataplane_common::{EndpointInfo, IpKey, IpcacheEntry, ServiceInfo, ServiceKey, maps as names};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::maps::DatapathMaps;

/// A frontend as releases before 8-byte frontends keyed it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WideServiceKey {
    pub vip: IpKey,
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}

// SAFETY: plain data of 24 bytes without padding.
unsafe impl Pod for WideServiceKey {}
const _: () = assert!(size_of::<WideServiceKey>() == 24);

/// What is carried, read from the old maps.
#[derive(Default)]
pub(super) struct Carried {
    endpoints: Vec<([u8; 4], EndpointInfo)>,
    hosts: Vec<([u8; 4], IpcacheEntry)>,
    services: Vec<(ServiceKey, ServiceInfo)>,
}

impl Carried {
    /// Reads what can be carried from the pinned map `name` at `path`,
    /// about to be replaced (other maps are rebuilt from the control plane).
    pub(super) fn read(&mut self, name: &str, path: &Path) {
        match name {
            names::ENDPOINTS => self.endpoints = addresses(path),
            names::IPCACHE_HOSTS => self.hosts = addresses(path),
            names::SERVICES => self.services = frontends(path),
            _ => {}
        }
    }

    /// Writes the carried entries into the new maps. A map configured
    /// smaller than its entries keeps those that fit; the agent's first
    /// complete view puts the rest right (and says so when it cannot).
    pub(super) fn write(self, maps: &mut DatapathMaps) {
        let total = self.endpoints.len() + self.hosts.len() + self.services.len();
        if total == 0 {
            return;
        }
        let mut failed = 0;
        for (ip, info) in self.endpoints {
            failed += usize::from(maps.upsert_endpoint(ip, info).is_err());
        }
        for (ip, entry) in self.hosts {
            let host = Ipv4Net::from(Ipv4Addr::from(ip));
            failed += usize::from(maps.upsert_ipcache(host, entry).is_err());
        }
        for (key, service) in self.services {
            failed += usize::from(maps.upsert_service(key, service).is_err());
        }
        if failed == 0 {
            info!(entries = total, "entries of replaced maps carried over");
        } else {
            warn!(
                entries = total,
                failed, "some entries of replaced maps did not fit their new maps"
            );
        }
    }
}

/// The entries of a hash map keyed by IPv4 address: 4-byte keys as this
/// build writes them, or the IPv4 entries of 20-byte `IpKey`s.
fn addresses<V: Pod>(path: &Path) -> Vec<([u8; 4], V)> {
    if let Some(entries) = entries::<[u8; 4], V>(path) {
        return entries;
    }
    entries::<IpKey, V>(path)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, value)| Some((key.as_v4()?, value)))
        .collect()
}

/// The entries of the frontend map, of this build's layout or the wide one.
fn frontends(path: &Path) -> Vec<(ServiceKey, ServiceInfo)> {
    if let Some(entries) = entries::<ServiceKey, ServiceInfo>(path) {
        return entries;
    }
    entries::<WideServiceKey, ServiceInfo>(path)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, info)| {
            let frontend = ServiceKey {
                vip: key.vip.as_v4()?,
                port: key.port,
                protocol: key.protocol,
                _pad: 0,
            };
            Some((frontend, info))
        })
        .collect()
}

/// Every entry of the pinned hash map at `path`, when its keys and values
/// have the sizes of `K` and `V`.
fn entries<K: Pod, V: Pod>(path: &Path) -> Option<Vec<(K, V)>> {
    let data = MapData::from_pin(path).ok()?;
    let map = HashMap::<_, K, V>::try_from(Map::HashMap(data)).ok()?;
    Some(map.iter().filter_map(Result::ok).collect())
}
