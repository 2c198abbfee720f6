//! Flow records as `/flows` serves them and `fleetnet observe` prints
//! them, and the store of recent ones.

use std::{collections::VecDeque, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

/// One end of a flow, named as well as the agent could.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowEnd {
    pub ip: Option<Ipv4Addr>,
    /// TCP or UDP port.
    pub port: Option<u16>,
    pub identity: u32,
    /// Cluster name; `none` outside the mesh.
    pub cluster: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Position in this agent's stream (for `?since=`).
    pub seq: u64,
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    pub node: String,
    /// `FORWARDED` or `DROPPED`.
    pub verdict: String,
    /// The forwarding verdict or drop reason, as in the metrics.
    pub reason: String,
    /// `ingress` or `egress`, as in the metrics.
    pub direction: String,
    pub protocol: String,
    pub source: FlowEnd,
    pub destination: FlowEnd,
}

pub const FORWARDED: &str = "FORWARDED";
pub const DROPPED: &str = "DROPPED";

/// The recent flows, oldest first, numbered.
#[derive(Debug)]
pub struct FlowStore {
    flows: VecDeque<FlowRecord>,
    capacity: usize,
    next_seq: u64,
    stream: u64,
}

/// What `/flows` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowPage {
    pub flows: Vec<FlowRecord>,
    /// Ask for `?since=` this next time.
    pub next: u64,
    /// Which numbering `seq` and `next` are of: another one after the
    /// store was made anew (its process restarted), when reading from
    /// `next` on would miss flows.
    #[serde(default)]
    pub stream: u64,
}

impl FlowStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            flows: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            next_seq: 1,
            // When it was made, in nanoseconds: another for each store.
            stream: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_nanos() as u64),
        }
    }

    pub fn push(&mut self, mut flow: FlowRecord) {
        flow.seq = self.next_seq;
        self.next_seq += 1;
        if self.flows.len() == self.capacity {
            self.flows.pop_front();
        }
        self.flows.push_back(flow);
    }

    /// Flows numbered `since` and later still kept.
    pub fn since(&self, since: u64) -> FlowPage {
        self.last_since(since, usize::MAX)
    }

    /// The newest `most` of the flows numbered `since` and later, oldest
    /// first: what a page showing a few wants, without copying them all.
    pub fn last_since(&self, since: u64, most: usize) -> FlowPage {
        let mut flows: Vec<FlowRecord> = self
            .flows
            .iter()
            .rev()
            .take_while(|flow| flow.seq >= since)
            .take(most)
            .cloned()
            .collect();
        flows.reverse();
        FlowPage {
            flows,
            next: self.next_seq,
            stream: self.stream,
        }
    }
}

/// `fleetnet observe` filters; all given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `FORWARDED` or `DROPPED`.
    pub verdict: Option<String>,
    /// Either end in this cluster.
    pub cluster: Option<String>,
    /// Either end this pod (`namespace/name`).
    pub pod: Option<(String, String)>,
    /// Either end in this namespace.
    pub namespace: Option<String>,
    /// This forwarding verdict or drop reason (`policy_denied_ingress`).
    pub reason: Option<String>,
}

impl Filter {
    pub fn matches(&self, flow: &FlowRecord) -> bool {
        let ends = [&flow.source, &flow.destination];
        self.verdict
            .as_ref()
            .is_none_or(|v| v.eq_ignore_ascii_case(&flow.verdict))
            && self
                .cluster
                .as_ref()
                .is_none_or(|c| ends.iter().any(|end| end.cluster == *c))
            && self.pod.as_ref().is_none_or(|(namespace, pod)| {
                ends.iter().any(|end| {
                    end.namespace.as_deref() == Some(namespace) && end.pod.as_deref() == Some(pod)
                })
            })
            && self.namespace.as_ref().is_none_or(|namespace| {
                ends.iter()
                    .any(|end| end.namespace.as_deref() == Some(namespace))
            })
            && self
                .reason
                .as_ref()
                .is_none_or(|reason| *reason == flow.reason)
    }
}

/// One flow as a line, like `hubble observe`:
/// `21:11:18.678 c2/shop/web-1 10.2.1.11:40000 (id 131328) -> c1/shop/db-0 10.1.1.11:5432 (id 65792) tcp egress DROPPED policy_denied_egress`.
pub fn render_line(flow: &FlowRecord) -> String {
    format!(
        "{} {} -> {} {} {} {} {}",
        clock(flow.time_ns),
        end(&flow.source),
        end(&flow.destination),
        flow.protocol,
        flow.direction,
        flow.verdict,
        flow.reason
    )
}

fn end(end: &FlowEnd) -> String {
    let address = match (end.ip, end.port) {
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => "?".into(),
    };
    let name = match (&end.namespace, &end.pod) {
        (Some(namespace), Some(pod)) => format!("{}/{namespace}/{pod} ", end.cluster),
        _ => format!("{} ", end.cluster),
    };
    format!("{name}{address} (id {})", end.identity)
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in nanoseconds.
fn clock(time_ns: u64) -> String {
    let ms = time_ns / 1_000_000;
    let (h, m, s) = ((ms / 3_600_000) % 24, (ms / 60_000) % 60, (ms / 1000) % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}", ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(verdict: &str, cluster: &str, pod: &str) -> FlowRecord {
        FlowRecord {
            time_ns: 76_278_678_000_000,
            node: "n1".into(),
            verdict: verdict.into(),
            reason: "policy_denied_ingress".into(),
            direction: "ingress".into(),
            protocol: "tcp".into(),
            source: FlowEnd {
                ip: Some(Ipv4Addr::new(10, 2, 1, 11)),
                port: Some(40000),
                identity: 131_328,
                cluster: cluster.into(),
                namespace: Some("shop".into()),
                pod: Some(pod.into()),
            },
            destination: FlowEnd {
                ip: Some(Ipv4Addr::new(10, 1, 1, 11)),
                port: Some(8080),
                identity: 65_792,
                cluster: "c1".into(),
                namespace: Some("shop".into()),
                pod: Some("db".into()),
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_store_keeps_the_newest_and_pages_by_sequence() {
        let mut store = FlowStore::new(3);
        for _ in 0..5 {
            store.push(flow(DROPPED, "c2", "web"));
        }
        let page = store.since(0);
        assert_eq!(
            page.flows.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(page.next, 6);
        assert!(store.since(6).flows.is_empty());
        assert_eq!(store.since(5).flows.len(), 1);
        let last = store.last_since(0, 2);
        assert_eq!(last.flows.iter().map(|f| f.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(last.next, 6);
    }

    #[test]
    fn filters_and_lines() {
        let dropped = flow(DROPPED, "c2", "web");
        let forwarded = flow(FORWARDED, "c3", "api");
        let filter = |verdict: Option<&str>, cluster: Option<&str>, pod: Option<&str>| Filter {
            verdict: verdict.map(String::from),
            cluster: cluster.map(String::from),
            pod: pod.map(|p| ("shop".to_string(), p.to_string())),
            ..Filter::default()
        };
        assert!(filter(Some("dropped"), None, None).matches(&dropped));
        assert!(!filter(Some("DROPPED"), None, None).matches(&forwarded));
        assert!(
            filter(None, Some("c1"), None).matches(&forwarded),
            "either end"
        );
        assert!(!filter(None, Some("c2"), None).matches(&forwarded));
        assert!(filter(None, None, Some("web")).matches(&dropped));
        assert!(!filter(None, None, Some("web")).matches(&forwarded));
        let namespace = |namespace: &str| Filter {
            namespace: Some(namespace.into()),
            ..Filter::default()
        };
        assert!(namespace("shop").matches(&dropped));
        assert!(!namespace("kube-system").matches(&dropped));
        let reason = |reason: &str| Filter {
            reason: Some(reason.into()),
            ..Filter::default()
        };
        assert!(reason("policy_denied_ingress").matches(&dropped));
        assert!(!reason("policy_denied_egress").matches(&dropped));
        assert_eq!(
            render_line(&dropped),
            "21:11:18.678 c2/shop/web 10.2.1.11:40000 (id 131328) -> c1/shop/db 10.1.1.11:8080 (id 65792) tcp ingress DROPPED policy_denied_ingress"
        );
    }
}
