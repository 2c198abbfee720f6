//! An HTTP server that speaks the Kubernetes API's list and watch wire
//! format for the resources fleetnet reads, and get and merge-patch for
//! single objects (the agent's DaemonSet), with RBAC's authorization
//! when given the rules. No kube-apiserver, kind
//! or envtest exists on these machines, so the `kube` source is tested
//! against this instead of a trait mock: real HTTP, real JSON, a global
//! resourceVersion, `fieldSelector=spec.nodeName=`, chunked watch streams,
//! BOOKMARK events, server-side watch timeouts, and `410 Gone` (as an
//! ERROR watch event, the way the API server reports an expired
//! resourceVersion) after a compaction.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

/// The resources served, by URL path.
const RESOURCES: [(&str, &str, &str); 7] = [
    ("/api/v1/nodes", "v1", "Node"),
    ("/api/v1/pods", "v1", "Pod"),
    ("/api/v1/namespaces", "v1", "Namespace"),
    ("/api/v1/services", "v1", "Service"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
    ),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networking.k8s.io/v1",
        "NetworkPolicy",
    ),
    ("/apis/apps/v1/daemonsets", "apps/v1", "DaemonSet"),
];

#[derive(Clone, Debug)]
struct Change {
    path: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    revision: u64,
    /// (path, namespace, name) -> object with its resourceVersion.
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// Every change, by resourceVersion, for watches that start behind.
    history: Vec<(u64, Change)>,
    /// Watches from older resourceVersions get 410 Gone.
    oldest_watchable: u64,
    /// Request lines received, for assertions.
    requests: Vec<String>,
    /// When set, requests are authorized as RBAC would with these rules.
    rbac: Option<Vec<Grant>>,
}

/// One RBAC rule as granted: a ClusterRole's (any namespace) or a Role's
/// (`namespace`).
#[derive(Clone, Debug)]
pub struct Grant {
    pub namespace: Option<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
}

/// What a request asks, in RBAC's terms.
#[derive(Debug)]
struct Access<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

impl Grant {
    fn allows(&self, access: &Access<'_>) -> bool {
        let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        self.namespace
            .as_deref()
            .is_none_or(|namespace| access.namespace == Some(namespace))
            && any(&self.api_groups, access.group)
            && any(&self.resources, access.resource)
            && any(&self.verbs, access.verb)
            && (self.resource_names.is_empty()
                || access
                    .name
                    .is_some_and(|name| self.resource_names.iter().any(|n| n == name)))
    }
}

pub struct FakeApiServer {
    address: SocketAddr,
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<(u64, Change)>,
    gone: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a watch stays open before the server ends it (the real one
/// uses the client's timeoutSeconds, minutes; short here so resuming from
/// bookmarks is exercised).
const WATCH_LIFETIME: Duration = Duration::from_secs(3);
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

impl FakeApiServer {
    /// Starts on 127.0.0.1 with a free port. Must run inside a tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let store = Arc::new(Mutex::new(Store::default()));
        let (changes, _) = broadcast::channel(1024);
        let (gone, _) = broadcast::channel(16);
        let task = {
            let (store, changes, gone) = (store.clone(), changes.clone(), gone.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (store, changes, gone) = (store.clone(), changes.clone(), gone.clone());
                    tokio::spawn(serve(stream, store, changes, gone));
                }
            })
        };
        Ok(Self {
            address,
            store,
            changes,
            gone,
            task,
        })
    }

    /// Writes a kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{ name: fake, cluster: {{ server: 'http://{}' }} }}]\n\
                 users: [{{ name: fake, user: {{}} }}]\n\
                 contexts: [{{ name: fake, context: {{ cluster: fake, user: fake }} }}]\n",
                self.address
            ),
        )
    }

    /// Creates or replaces an object (its apiVersion and kind say where).
    pub fn apply(&self, object: Value) {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let (path, _, _) = resource_for_kind(&kind);
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let key = (path, namespace, name);
        let mut store = self.store.lock().unwrap();
        let event = if store.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let object = self.record(&mut store, path, event, object);
        store.objects.insert(key, object);
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let (path, _, _) = resource_for_kind(kind);
        let mut store = self.store.lock().unwrap();
        if let Some(object) = store.objects.remove(&(path, namespace.into(), name.into())) {
            self.record(&mut store, path, "DELETED", object);
        }
    }

    /// Gives `object` the next resourceVersion and tells history and open
    /// watches about the change.
    fn record(
        &self,
        store: &mut Store,
        path: &'static str,
        kind: &'static str,
        mut object: Value,
    ) -> Value {
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let change = Change {
            path,
            kind,
            object: object.clone(),
        };
        store.history.push((revision, change.clone()));
        let _ = self.changes.send((revision, change));
        object
    }

    /// Removes an object without any watch event, as if its deletion fell
    /// in a gap the watch could not replay; only a re-list reveals it.
    pub fn delete_silently(&self, kind: &str, namespace: &str, name: &str) {
        let mut store = self.store.lock().unwrap();
        let (path, _, _) = resource_for_kind(kind);
        store.objects.remove(&(path, namespace.into(), name.into()));
    }

    /// Forgets the event history: open watches and watches from any
    /// earlier resourceVersion get 410 Gone and must list again.
    pub fn compact(&self) {
        let mut store = self.store.lock().unwrap();
        store.oldest_watchable = store.revision + 1;
        store.history.clear();
        let _ = self.gone.send(());
    }

    /// Request lines seen so far (method, path and query).
    pub fn requests(&self) -> Vec<String> {
        self.store.lock().unwrap().requests.clone()
    }

    /// From now on, answers 403 Forbidden to whatever `grants` do not
    /// allow, as the API server's RBAC authorizer does.
    pub fn authorize_with(&self, grants: Vec<Grant>) {
        self.store.lock().unwrap().rbac = Some(grants);
    }

    /// The object `kind` `namespace/name` as stored now.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (path, _, _) = resource_for_kind(kind);
        let store = self.store.lock().unwrap();
        store
            .objects
            .get(&(path, namespace.into(), name.into()))
            .cloned()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource_for_kind(kind: &str) -> (&'static str, &'static str, &'static str) {
    RESOURCES
        .into_iter()
        .find(|(_, _, k)| *k == kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve {kind}"))
}

/// Serves one connection: any number of requests (HTTP/1.1 keep-alive).
async fn serve(
    stream: TcpStream,
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<(u64, Change)>,
    gone: broadcast::Sender<()>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if tokio::io::AsyncReadExt::read_exact(&mut reader, &mut body)
            .await
            .is_err()
        {
            return;
        }
        let method = request_line
            .split_whitespace()
            .next()
            .unwrap_or("GET")
            .to_string();
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        store
            .lock()
            .unwrap()
            .requests
            .push(request_line.trim().to_string());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        if let Some((collection, namespace, name)) = object_path(path) {
            let access = Access {
                verb: if method == "PATCH" { "patch" } else { "get" },
                group: group_of(collection),
                resource: collection.rsplit('/').next().unwrap_or_default(),
                namespace: Some(namespace),
                name: Some(name),
            };
            let (status, answer) = if !authorized(&store, &access) {
                forbidden(&access)
            } else if method == "PATCH" {
                patch_object(
                    &store,
                    &changes,
                    (collection, namespace, name),
                    &content_type,
                    &body,
                )
            } else {
                get_object(&store, (collection, namespace, name))
            };
            if respond(&mut write, status, &answer.to_string())
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let Some((path, api_version, kind)) = RESOURCES.into_iter().find(|(p, _, _)| *p == path)
        else {
            let body = json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}).to_string();
            let _ = respond(&mut write, 404, &body).await;
            continue;
        };
        let node = query
            .get("fieldSelector")
            .and_then(|selector| selector.strip_prefix("spec.nodeName="))
            .map(str::to_string);
        let matches = move |object: &Value| {
            node.as_ref()
                .is_none_or(|node| object["spec"]["nodeName"].as_str() == Some(node.as_str()))
        };
        let watching = query.get("watch").map(String::as_str) == Some("true");
        let access = Access {
            verb: if watching { "watch" } else { "list" },
            group: group_of(path),
            resource: path.rsplit('/').next().unwrap_or_default(),
            namespace: None,
            name: None,
        };
        if !authorized(&store, &access) {
            let (status, answer) = forbidden(&access);
            if respond(&mut write, status, &answer.to_string())
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        if watching {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
            let watch = Watch {
                path,
                api_version,
                kind,
                from,
                bookmarks,
            };
            if stream_watch(&mut write, &store, &changes, &gone, watch, &matches)
                .await
                .is_err()
            {
                return;
            }
        } else {
            let (revision, items) = {
                let store = store.lock().unwrap();
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|((p, _, _), object)| *p == path && matches(object))
                    .map(|(_, object)| object.clone())
                    .collect();
                (store.revision, items)
            };
            let body = json!({
                "apiVersion": api_version,
                "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": items,
            });
            if respond(&mut write, 200, &body.to_string()).await.is_err() {
                return;
            }
        }
    }
}

struct Watch {
    path: &'static str,
    api_version: &'static str,
    kind: &'static str,
    from: u64,
    bookmarks: bool,
}

async fn stream_watch(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    store: &Mutex<Store>,
    changes: &broadcast::Sender<(u64, Change)>,
    gone: &broadcast::Sender<()>,
    watch: Watch,
    matches: &impl Fn(&Value) -> bool,
) -> std::io::Result<()> {
    write
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let mut live = changes.subscribe();
    let mut gone = gone.subscribe();
    let (backlog, expired) = {
        let store = store.lock().unwrap();
        let expired = watch.from < store.oldest_watchable.saturating_sub(1);
        let backlog: Vec<(u64, Change)> = store
            .history
            .iter()
            .filter(|(revision, change)| *revision > watch.from && change.path == watch.path)
            .cloned()
            .collect();
        (backlog, expired)
    };
    if expired {
        write_chunk(write, &expired_event()).await?;
        return finish(write).await;
    }
    let mut last = watch.from;
    for (revision, change) in backlog {
        if matches(&change.object) {
            write_chunk(
                write,
                &json!({"type": change.kind, "object": change.object}),
            )
            .await?;
        }
        last = revision;
    }
    let end = tokio::time::sleep(WATCH_LIFETIME);
    tokio::pin!(end);
    let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
    loop {
        tokio::select! {
            _ = &mut end => return finish(write).await,
            _ = gone.recv() => {
                write_chunk(write, &expired_event()).await?;
                return finish(write).await;
            }
            _ = bookmark.tick(), if watch.bookmarks => {
                let revision = store.lock().unwrap().revision;
                let event = json!({
                    "type": "BOOKMARK",
                    "object": {"apiVersion": watch.api_version, "kind": watch.kind,
                               "metadata": {"resourceVersion": revision.to_string()}},
                });
                write_chunk(write, &event).await?;
            }
            change = live.recv() => {
                let Ok((revision, change)) = change else { return finish(write).await };
                if revision > last && change.path == watch.path && matches(&change.object) {
                    write_chunk(write, &json!({"type": change.kind, "object": change.object})).await?;
                }
                last = last.max(revision);
            }
        }
    }
}

fn expired_event() -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410,
    }})
}

async fn write_chunk(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    event: &Value,
) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write
        .write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
        .await?;
    write.flush().await
}

async fn finish(write: &mut tokio::net::tcp::OwnedWriteHalf) -> std::io::Result<()> {
    write.write_all(b"0\r\n\r\n").await?;
    write.flush().await
}

async fn respond(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    status: u16,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Not Found",
    };
    write
        .write_all(
            format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    write.flush().await
}

/// `/api/v1/namespaces/ns/pods/p` or `/apis/g/v/namespaces/ns/r/n`: the
/// collection's path (as in [`RESOURCES`]), the namespace and the name.
fn object_path(path: &str) -> Option<(&'static str, &str, &str)> {
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let mut parts = rest.split('/');
    let (namespace, resource, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let collection = RESOURCES
        .into_iter()
        .map(|(p, _, _)| p)
        .find(|p| p.strip_prefix(prefix) == Some(&format!("/{resource}")))?;
    Some((collection, namespace, name))
}

/// The API group of a collection path ("" for the core group).
fn group_of(path: &str) -> &str {
    path.strip_prefix("/apis/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
}

fn authorized(store: &Mutex<Store>, access: &Access<'_>) -> bool {
    let store = store.lock().unwrap();
    store
        .rbac
        .as_ref()
        .is_none_or(|grants| grants.iter().any(|grant| grant.allows(access)))
}

/// A 403 Status as the API server words it.
fn forbidden(access: &Access<'_>) -> (u16, Value) {
    let resource = if access.group.is_empty() {
        access.resource.to_string()
    } else {
        format!("{}.{}", access.resource, access.group)
    };
    let mut message = format!(
        "{resource} {}is forbidden: User \"system:serviceaccount:fleetnet-system:fleetnet-agent\" cannot {} resource \"{}\" in API group \"{}\"",
        access.name.map(|n| format!("\"{n}\" ")).unwrap_or_default(),
        access.verb,
        access.resource,
        access.group
    );
    match access.namespace {
        Some(namespace) => message.push_str(&format!(" in the namespace \"{namespace}\"")),
        None => message.push_str(" at the cluster scope"),
    }
    (
        403,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":"Forbidden","code":403}),
    )
}

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":reason,"code":code}),
    )
}

fn get_object(
    store: &Mutex<Store>,
    (path, namespace, name): (&'static str, &str, &str),
) -> (u16, Value) {
    let store = store.lock().unwrap();
    match store.objects.get(&(path, namespace.into(), name.into())) {
        Some(object) => (200, object.clone()),
        None => status(404, "NotFound", format!("{name} not found")),
    }
}

/// A JSON merge patch (RFC 7386), refused with 409 when it carries a
/// resourceVersion that is not the object's.
fn patch_object(
    store: &Mutex<Store>,
    changes: &broadcast::Sender<(u64, Change)>,
    (path, namespace, name): (&'static str, &str, &str),
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    if content_type != "application/merge-patch+json" {
        return status(
            415,
            "UnsupportedMediaType",
            format!("the fake serves merge patches only, not {content_type}"),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(422, "Invalid", "the patch is not JSON".into());
    };
    let mut store = store.lock().unwrap();
    let key = (path, namespace.to_string(), name.to_string());
    let Some(mut object) = store.objects.get(&key).cloned() else {
        return status(404, "NotFound", format!("{name} not found"));
    };
    if let Some(wanted) = patch["metadata"]["resourceVersion"].as_str()
        && object["metadata"]["resourceVersion"].as_str() != Some(wanted)
    {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {name}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    merge(&mut object, &patch);
    store.revision += 1;
    let revision = store.revision;
    object["metadata"]["resourceVersion"] = json!(revision.to_string());
    let change = Change {
        path,
        kind: "MODIFIED",
        object: object.clone(),
    };
    store.history.push((revision, change.clone()));
    let _ = changes.send((revision, change));
    store.objects.insert(key, object.clone());
    (200, object)
}

/// RFC 7386: objects merge key by key, null removes, anything else
/// replaces (lists whole).
fn merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
