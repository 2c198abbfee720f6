//! Revision-consistent, paginated listings of a prefix, and the stored
//! values they (and watches) return.

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};

use crate::connect::EtcdError;

/// Keys fetched per request when listing (stays far below gRPC's 4 MiB).
const PAGE: i64 = 2000;

/// One stored key, as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was created (orders cluster registrations).
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
}

/// A change to one key, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Put(StoredValue),
    Delete { key: String },
}

/// Every key under `prefix` at one revision, fetched page by page; returns
/// the keys and that revision.
pub async fn list(client: &mut Client, prefix: &str) -> Result<(Vec<StoredValue>, i64), EtcdError> {
    list_at(client, prefix, 0).await
}

/// Every key under `prefix` at `revision` (0: the current one), so that
/// several prefixes can be listed as of one moment.
pub async fn list_at(
    client: &mut Client,
    prefix: &str,
    mut revision: i64,
) -> Result<(Vec<StoredValue>, i64), EtcdError> {
    let end = prefix_end(prefix);
    let mut values = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let response = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = response.header().map_or(0, |header| header.revision());
        }
        for kv in response.kvs() {
            values.push(StoredValue {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
            });
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((values, revision)),
        }
    }
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
