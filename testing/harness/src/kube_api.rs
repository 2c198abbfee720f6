//! An HTTP server that speaks the Kubernetes API's list and watch wire
//! format for the five resources fleetnet reads. No kube-apiserver, kind
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
const RESOURCES: [(&str, &str, &str); 6] = [
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
        // Headers (GET requests carry no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
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
        if query.get("watch").map(String::as_str) == Some("true") {
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
    let reason = if status == 200 { "OK" } else { "Not Found" };
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
