//! The fleet keyspace, under `/fleetnet/fleet/v1/`: outside the mesh
//! prefix, so mesh watches never carry rollouts, reports or revisions.

pub const PREFIX: &str = "/fleetnet/fleet/v1/";

pub fn revisions() -> String {
    format!("{PREFIX}revisions/")
}

pub fn revision(number: u64) -> String {
    format!("{}{number:012}", revisions())
}

/// The last revision number handed out.
pub fn revision_sequence() -> String {
    format!("{PREFIX}sequences/revision")
}

pub fn strategies() -> String {
    format!("{PREFIX}strategies/")
}

pub fn strategy(name: &str) -> String {
    format!("{}{name}", strategies())
}

pub fn runs() -> String {
    format!("{PREFIX}runs/")
}

pub fn run(id: u64) -> String {
    format!("{}{id:012}", runs())
}

pub fn run_sequence() -> String {
    format!("{PREFIX}sequences/run")
}

pub fn targets() -> String {
    format!("{PREFIX}targets/")
}

/// The revision a cluster's agents should apply.
pub fn target(cluster: &str) -> String {
    format!("{}{cluster}", targets())
}

pub fn reports_of(cluster: &str) -> String {
    format!("{PREFIX}reports/{cluster}/")
}

/// What one agent applied, under its lease.
pub fn report(cluster: &str, node: &str) -> String {
    format!("{}{node}", reports_of(cluster))
}

pub fn reports() -> String {
    format!("{PREFIX}reports/")
}

/// Held by the active controller, under its lease.
pub fn controller() -> String {
    format!("{PREFIX}controller")
}

/// The fleet's admin keyspace: outside both the mesh and the fleet
/// prefixes, so no cluster role and not the controller's reads it; only
/// etcd's root (the fleet admin running `fleetnet cluster join`) does.
pub const ADMIN_PREFIX: &str = "/fleetnet/admin/v1/";

/// The fleet's certificate authority (certificate and key), which signs
/// the clusters' etcd client certificates.
pub fn ca() -> String {
    format!("{ADMIN_PREFIX}ca")
}

/// (cluster, node) of a report key.
pub fn parse_report(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(&reports())?;
    let (cluster, node) = rest.split_once('/')?;
    (!cluster.is_empty() && !node.is_empty() && !node.contains('/'))
        .then(|| (cluster.to_string(), node.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_keys_sort_by_number_and_reports_parse_back() {
        assert!(revision(9) < revision(10));
        assert!(run(99) < run(100));
        assert_eq!(
            parse_report(&report("c1", "n2")),
            Some(("c1".to_string(), "n2".to_string()))
        );
        assert_eq!(parse_report(&target("c1")), None);
        assert!(!revisions().starts_with(crate::keys::PREFIX));
    }
}
