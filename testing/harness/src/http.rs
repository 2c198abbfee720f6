//! Plain HTTP GETs from inside a namespace: agents', controllers' and
//! etcd's metrics.

use std::{io, net::SocketAddr, time::Duration};

use crate::netns::Netns;

/// The body of `GET path` from `address` (whatever the status), asked
/// from inside `netns`.
pub fn http_get(netns: &Netns, address: SocketAddr, path: &str) -> io::Result<String> {
    netns.enter(|| {
        // ureq connects on the calling thread, so the socket is made in
        // `netns`.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(&format!("http://{address}{path}"))
            .call()
            .map_err(io::Error::other)?;
        response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(io::Error::other)
    })?
}

/// The value of the line of a metrics exposition starting with `series`
/// (name and labels exactly as exposed), if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}
