//! A fake Kubernetes API server for tests: real HTTP on loopback that the
//! real `kube` client talks to, answering as kube-apiserver v1.36 does
//! (`../shared/kubernetes-facts.md`) for the resources pullbroker uses.
//!
//! What it does: get, list (label selectors `=`, `==`, `!=`, `in`, `notin`,
//! `key`, `!key`; field selectors `metadata.name`, `metadata.namespace`,
//! `spec.serviceAccountName`, secrets' `type`, events' `involvedObject.kind`,
//! `.name`, `.namespace`, `.uid`), watch
//! (from a resourceVersion, ADDED/MODIFIED/DELETED lines — an object that a
//! change moves out of a watch's selector is DELETED for it, into it ADDED,
//! as the watch cache does — 410 Gone `Status` for versions older than its
//! history), create (409 AlreadyExists,
//! `generateName`), replace (409 Conflict on a stale `resourceVersion`), merge
//! patch, JSON patch, server-side apply (field managers in `managedFields`,
//! 409 conflicts on fields another manager owns unless `force`, atomic lists,
//! ownership moving to whoever last changed a field), delete (finalizers hold the object with a
//! `deletionTimestamp`; dependents with an `ownerReference` to it are deleted),
//! the `/status` subresource (spec and status change independently;
//! `metadata.generation` follows spec changes), TokenRequest (tokens signed by
//! a [`TestIssuer`] with the account's uid, pod and node claims only when
//! bound to an existing pod, 422 below 10 minutes), TokenReview (201 with the
//! verdict in `status`; a token whose service account or bound pod is gone is
//! refused — after [`TOKEN_AUTH_CACHE`], since successes are cached ~10 s as
//! on a real server), OIDC discovery and JWKS, outages
//! ([`FakeApi::set_down`]), a server that answers nothing
//! ([`FakeApi::set_hung`]) and injected failures ([`FakeApi::fail_next`]).
//! Errors are `Status` objects.
//!
//! Where it differs from Kubernetes, on purpose or not yet:
//! - no authentication or authorization: every request is admitted (a bearer
//!   token is taken as the user name and only recorded, see [`crate::api_log`]);
//! - no schema validation or defaulting (CRD schemas are not enforced);
//! - server-side apply keeps `managedFields` but treats every list as atomic
//!   (lists with merge keys, like `containers`, are merged by key upstream);
//! - `limit`/`continue` page in (namespace, name) order, but later pages show
//!   the current state rather than a snapshot at the first page's
//!   resourceVersion (which every page reports);
//! - resources must be registered ([`FakeApi::RESOURCES`] lists the built-in ones);
//! - watch history keeps the last 10,000 events; older versions get 410;
//! - garbage collection is immediate and foreground-like, not by a controller;
//! - no other controllers either: a Deployment makes no ReplicaSet or Pod, a
//!   Pod never runs (tests write its `status` as a kubelet would).

// Helpers return a ready `Response` as their error (the axum idiom); it is
// built once per request, so its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::issuer::{now, TestIssuer};

/// A resource the server knows: where it lives and what it is.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const HISTORY: usize = 10_000;

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
    /// The object before this event, to tell a watch with a selector that
    /// an object left (DELETED) or entered (ADDED) its selection.
    previous: Option<Value>,
}

/// (token, audiences) of a TokenReview, and its verdict (user, audiences).
type ReviewKey = (String, Vec<String>);
type Reviewed = (String, Vec<String>);

struct Store {
    rv: u64,
    /// (resource key, namespace, name) → object
    objects: BTreeMap<(String, String, String), Value>,
    history: VecDeque<Event>,
    uid: u64,
    requests: BTreeMap<String, usize>,
    /// Successful token authentications, cached as the real server does.
    auth_cache: HashMap<ReviewKey, (std::time::Instant, Reviewed)>,
    /// Injected failures, in the order they were asked for.
    faults: Vec<Fault>,
}

/// An injected failure ([`FakeApi::fail_next`], [`FakeApi::fail_object_of_next`]).
struct Fault {
    verb: String,
    plural: String,
    code: u16,
    /// `None`: answers once. `Some(None)`: the first hit pins the object,
    /// `Some(Some(name))`: every request on that object fails.
    object: Option<Option<String>>,
}

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    resources: Vec<ResourceType>,
    issuer: TestIssuer,
    url: String,
    requests: crate::api_log::Recorder,
    /// `true` while requests hang (see [`FakeApi::set_hung`]).
    hung: tokio::sync::watch::Sender<bool>,
}

/// The running fake API server.
pub struct FakeApi {
    pub url: String,
    inner: Arc<Inner>,
    /// `true` while the server is "down" (see [`FakeApi::set_down`]).
    down: tokio::sync::watch::Sender<bool>,
    _thread: std::thread::JoinHandle<()>,
}

/// The listener the fake serves on: while down, every connection is cut
/// (open ones, watches included, and each new one as it is accepted), as
/// when a real API server restarts. Each connection is relayed through an
/// in-memory pipe so it can be cut from outside.
struct Switched {
    listener: tokio::net::TcpListener,
    down: tokio::sync::watch::Receiver<bool>,
}

impl axum::serve::Listener for Switched {
    type Io = tokio::io::DuplexStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((mut socket, addr)) = self.listener.accept().await else {
                continue;
            };
            if *self.down.borrow() {
                drop(socket);
                continue;
            }
            let _ = socket.set_nodelay(true);
            let (ours, mut theirs) = tokio::io::duplex(256 * 1024);
            let mut down = self.down.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut socket, &mut theirs) => {}
                    _ = down.wait_for(|d| *d) => {}
                }
            });
            return (ours, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

fn status(code: u16, reason: &str, message: String, details: Value) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn rfc3339(t: i64) -> String {
    // Days-from-civil, to avoid a date crate in test support.
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

impl FakeApi {
    /// The resources served unless more are registered.
    pub const RESOURCES: &'static [ResourceType] = &[
        ResourceType {
            group: "",
            version: "v1",
            plural: "namespaces",
            kind: "Namespace",
            namespaced: false,
        },
        ResourceType {
            group: "",
            version: "v1",
            plural: "secrets",
            kind: "Secret",
            namespaced: true,
        },
        ResourceType {
            group: "",
            version: "v1",
            plural: "serviceaccounts",
            kind: "ServiceAccount",
            namespaced: true,
        },
        ResourceType {
            group: "",
            version: "v1",
            plural: "pods",
            kind: "Pod",
            namespaced: true,
        },
        ResourceType {
            group: "",
            version: "v1",
            plural: "events",
            kind: "Event",
            namespaced: true,
        },
        ResourceType {
            group: "",
            version: "v1",
            plural: "configmaps",
            kind: "ConfigMap",
            namespaced: true,
        },
        ResourceType {
            group: "events.k8s.io",
            version: "v1",
            plural: "events",
            kind: "Event",
            namespaced: true,
        },
        ResourceType {
            group: "apps",
            version: "v1",
            plural: "deployments",
            kind: "Deployment",
            namespaced: true,
        },
        ResourceType {
            group: "serving.knative.dev",
            version: "v1",
            plural: "services",
            kind: "Service",
            namespaced: true,
        },
        ResourceType {
            group: "admissionregistration.k8s.io",
            version: "v1",
            plural: "mutatingwebhookconfigurations",
            kind: "MutatingWebhookConfiguration",
            namespaced: false,
        },
        ResourceType {
            group: "coordination.k8s.io",
            version: "v1",
            plural: "leases",
            kind: "Lease",
            namespaced: true,
        },
        ResourceType {
            group: "pullbroker.dev",
            version: "v1alpha1",
            plural: "pullgrants",
            kind: "PullGrant",
            namespaced: false,
        },
        ResourceType {
            group: "pullbroker.dev",
            version: "v1alpha1",
            plural: "registrycredentials",
            kind: "RegistryCredential",
            namespaced: false,
        },
    ];

    /// Starts on 127.0.0.1 with its own runtime thread; tokens are signed by `issuer`.
    pub fn start(issuer: TestIssuer) -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let url = format!("http://{addr}");
        let (events, _) = broadcast::channel(HISTORY);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: 100,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                uid: 0,
                requests: BTreeMap::new(),
                auth_cache: HashMap::new(),
                faults: Vec::new(),
            }),
            events,
            resources: Self::RESOURCES.to_vec(),
            issuer,
            url: url.clone(),
            requests: crate::api_log::Recorder::new(addr.port()),
            hung: tokio::sync::watch::channel(false).0,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let switched = Switched {
                        listener,
                        down: down_rx,
                    };
                    axum::serve(switched, app).await.expect("serve");
                });
            })
            .expect("thread");
        FakeApi {
            url,
            inner,
            down,
            _thread: thread,
        }
    }

    /// A kubeconfig pointing at this server (no credentials: it admits
    /// everything; the requests are not recorded — the tests' own set-up).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with("{}")
    }

    /// A kubeconfig whose bearer token is `user` (e.g.
    /// [`crate::api_log::CONTROLLER`]): its requests are recorded under
    /// that name for the RBAC check (see [`crate::api_log`]).
    pub fn kubeconfig_as(&self, user: &str) -> String {
        self.kubeconfig_with(&format!("{{token: \"{user}\"}}"))
    }

    /// A `kube` client for this server, as [`FakeApi::kubeconfig`] (the
    /// tests' own set-up, not recorded).
    pub async fn client(&self) -> kube::Client {
        Self::client_of(&self.kubeconfig()).await
    }

    /// A `kube` client identifying as `user`, as [`FakeApi::kubeconfig_as`].
    pub async fn client_as(&self, user: &str) -> kube::Client {
        Self::client_of(&self.kubeconfig_as(user)).await
    }

    async fn client_of(kubeconfig: &str) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(kubeconfig).expect("our own kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("our own kubeconfig");
        kube::Client::try_from(config).expect("a client for loopback HTTP")
    }

    fn kubeconfig_with(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {user}\n",
            self.url
        )
    }

    /// Writes (create/replace/patch/delete) handled so far, by verb and resource.
    pub fn writes(&self) -> BTreeMap<String, usize> {
        self.inner.store.lock().expect("poisoned").requests.clone()
    }

    /// Makes the next `verb` (`patch`, `update`, `create`, `delete`, `get`,
    /// `list`) on `plural` answer `code` (409 Conflict, 500, …) without
    /// touching anything, as a lost race or a failing server would.
    pub fn fail_next(&self, verb: &str, plural: &str, code: u16) {
        let mut s = self.inner.store.lock().expect("poisoned");
        s.faults.push(Fault {
            verb: verb.into(),
            plural: plural.into(),
            code,
            object: None,
        });
    }

    /// Makes the next `verb` on `plural` answer `code`, and every later
    /// `verb` on the same object too: an object deleted a moment ago answers
    /// each write with 404 while a client's cache still lists it.
    pub fn fail_object_of_next(&self, verb: &str, plural: &str, code: u16) {
        let mut s = self.inner.store.lock().expect("poisoned");
        s.faults.push(Fault {
            verb: verb.into(),
            plural: plural.into(),
            code,
            object: Some(None),
        });
    }

    /// Takes the server down (every connection cut, new ones closed at
    /// once: clients see the transport fail, as during an API-server
    /// restart) or brings it back with its state intact.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// Makes the server hang (`true`): connections are accepted and
    /// requests read, but none is answered until `set_hung(false)`, as an
    /// overloaded or partitioned API server behaves. Held requests are then
    /// answered.
    pub fn set_hung(&self, hung: bool) {
        self.inner.hung.send_replace(hung);
    }

    /// Drops watch history older than the newest event, as etcd compaction
    /// does, so older resourceVersions get 410 Gone.
    pub fn compact(&self) {
        let mut s = self.inner.store.lock().expect("poisoned");
        let keep = s.history.back().cloned();
        s.history.clear();
        s.history.extend(keep);
    }
}

struct Route {
    resource: ResourceType,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn route(inner: &Inner, path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, more @ ..] => (ns.to_string(), [&[*r][..], more].concat()),
        other => (String::new(), other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        // `/api/v1/namespaces/NAME` itself.
        [] if !namespace.is_empty() => ("namespaces", Some(namespace.clone()), None),
        _ => return None,
    };
    let (namespace, name) = if plural == "namespaces" && rest.is_empty() {
        (String::new(), name)
    } else {
        (namespace, name)
    };
    let resource = inner
        .resources
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)?
        .clone();
    Some(Route {
        resource,
        namespace,
        name,
        sub,
    })
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query().map(query_pairs).unwrap_or_default()
}

fn query_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Label selector semantics of Kubernetes (`,`-separated requirements).
pub fn labels_match(selector: &str, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    split_requirements(selector).iter().all(|req| {
        let req = req.trim();
        if req.is_empty() {
            return true;
        }
        if let Some((k, vals)) = req.split_once(" notin ") {
            let vals = set(vals);
            return get(k.trim()).is_none_or(|v| !vals.contains(&v.to_string()));
        }
        if let Some((k, vals)) = req.split_once(" in ") {
            let vals = set(vals);
            return get(k.trim()).is_some_and(|v| vals.contains(&v.to_string()));
        }
        if let Some((k, v)) = req.split_once("!=") {
            return get(k.trim()) != Some(v.trim());
        }
        if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            return get(k.trim()) == Some(v.trim());
        }
        if let Some(k) = req.strip_prefix('!') {
            return get(k.trim()).is_none();
        }
        get(req).is_some()
    })
}

fn set(vals: &str) -> Vec<String> {
    vals.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(|v| v.trim().to_string())
        .collect()
}

/// Splits on commas outside parentheses.
fn split_requirements(selector: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn fields_match(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|r| !r.is_empty()).all(|req| {
        let (field, want, negate) = match req.split_once("!=") {
            Some((f, v)) => (f, v, true),
            None => match req.split_once("==").or_else(|| req.split_once('=')) {
                Some((f, v)) => (f, v, false),
                None => return true,
            },
        };
        let got = match field {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            "spec.serviceAccountName" => obj["spec"]["serviceAccountName"].as_str(),
            // Core Events' involved object (the fields kubectl describe uses).
            "involvedObject.kind" => obj["involvedObject"]["kind"].as_str(),
            "involvedObject.name" => obj["involvedObject"]["name"].as_str(),
            "involvedObject.namespace" => obj["involvedObject"]["namespace"].as_str(),
            "involvedObject.uid" => obj["involvedObject"]["uid"].as_str(),
            // Secrets' `type` (a real server accepts it for secrets only).
            "type" => obj["type"].as_str(),
            _ => None,
        };
        (got == Some(want)) != negate
    })
}

fn selected(q: &BTreeMap<String, String>, obj: &Value) -> bool {
    q.get("labelSelector")
        .is_none_or(|s| labels_match(s, &obj["metadata"]["labels"]))
        && q.get("fieldSelector").is_none_or(|s| fields_match(s, obj))
}

fn key(r: &Route) -> String {
    format!("{}/{}", r.resource.api_version(), r.resource.plural)
}

impl Inner {
    /// Records an event and bumps the object's resourceVersion.
    fn commit(
        &self,
        s: &mut Store,
        r: &Route,
        kind_of_event: &'static str,
        mut obj: Value,
    ) -> Value {
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let k = (key(r), r.namespace.clone(), name);
        let previous = if kind_of_event == "DELETED" {
            s.objects.remove(&k)
        } else {
            s.objects.insert(k, obj.clone())
        };
        let ev = Event {
            rv: s.rv,
            resource: key(r),
            namespace: r.namespace.clone(),
            kind: kind_of_event,
            object: obj.clone(),
            previous,
        };
        s.history.push_back(ev.clone());
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
        let _ = self.events.send(ev);
        obj
    }

    /// Deletes objects whose ownerReferences point at `uid` (garbage collection).
    fn collect_garbage(&self, s: &mut Store, uid: &str) {
        let dependents: Vec<((String, String, String), Value)> = s
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for ((res, ns, _), obj) in dependents {
            let Some(resource) = self
                .resources
                .iter()
                .find(|r| format!("{}/{}", r.api_version(), r.plural) == res)
                .cloned()
            else {
                continue;
            };
            let r = Route {
                resource,
                namespace: ns,
                name: None,
                sub: None,
            };
            let dep_uid = obj["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.commit(s, &r, "DELETED", obj);
            self.collect_garbage(s, &dep_uid);
        }
    }
}

/// Logs the request under the caller's bearer token (see [`crate::api_log`]).
fn record(inner: &Inner, method: &Method, uri: &Uri, headers: &HeaderMap) {
    use crate::api_log::{verb, ApiRequest};
    let Some(user) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return;
    };
    let path = uri.path();
    let watch = query(uri)
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1");
    let mut r = ApiRequest {
        user: user.to_string(),
        verb: String::new(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        non_resource_path: String::new(),
    };
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        r.verb = "create".into();
        r.group = "authentication.k8s.io".into();
        r.resource = "tokenreviews".into();
    } else if let Some(route) = route(inner, path) {
        r.verb = verb(method.as_str(), route.name.is_some(), watch).into();
        r.group = route.resource.group.into();
        r.resource = route.resource.plural.into();
        r.subresource = route.sub.unwrap_or_default();
        r.namespace = route.namespace;
        r.name = route.name.unwrap_or_default();
    } else {
        r.verb = method.as_str().to_ascii_lowercase();
        r.non_resource_path = path.to_string();
    }
    inner.requests.record(r);
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A hung server holds every request until it is released.
    let mut hung = inner.hung.subscribe();
    let _ = hung.wait_for(|h| !*h).await;
    let path = uri.path().to_string();
    record(&inner, &method, &uri, &headers);
    match (method.as_str(), path.as_str()) {
        ("GET", "/.well-known/openid-configuration") => {
            return axum::Json(json!({"issuer": inner.issuer.issuer, "jwks_uri": format!("{}/openid/v1/jwks", inner.url),
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"]}))
            .into_response()
        }
        ("GET", "/openid/v1/jwks") => return ([("content-type", "application/jwk-set+json")], inner.issuer.jwks()).into_response(),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => return token_review(&inner, &body),
        // Not Kubernetes: the write counts, for benchmarks in another process.
        ("GET", "/fake/writes") => {
            return axum::Json(inner.store.lock().expect("poisoned").requests.clone()).into_response()
        }
        _ => {}
    }
    let Some(r) = route(&inner, &path) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        );
    };
    let q = query(&uri);
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = crate::api_log::verb(method.as_str(), r.name.is_some(), watching);
    let fault = {
        let mut s = inner.store.lock().expect("poisoned");
        let hit = s.faults.iter().position(|f| {
            f.verb == verb
                && f.plural == r.resource.plural
                && match &f.object {
                    Some(Some(name)) => r.name.as_ref() == Some(name),
                    _ => true,
                }
        });
        hit.map(|i| {
            let f = &mut s.faults[i];
            let code = f.code;
            match &mut f.object {
                None => {
                    s.faults.remove(i);
                }
                Some(pinned) => {
                    pinned.get_or_insert_with(|| r.name.clone().unwrap_or_default());
                }
            }
            code
        })
    };
    if let Some(code) = fault {
        let reason = match code {
            409 => "Conflict",
            422 => "Invalid",
            404 => "NotFound",
            _ => "InternalError",
        };
        let message = match code {
            409 => "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again".to_string(),
            _ => format!("injected failure ({code})"),
        };
        return status(code, reason, message, json!({}));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Metadata-only reads (`Accept: …;as=PartialObjectMetadata;g=meta.k8s.io;v=v1`).
    let meta_only = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    match (method.as_str(), &r.name, r.sub.as_deref()) {
        ("GET", None, _) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(&inner, &r, &q, meta_only)
        }
        ("GET", None, _) => list(&inner, &r, &q, meta_only),
        ("GET", Some(_), _) => get(&inner, &r),
        ("POST", _, Some("token")) if r.resource.plural == "serviceaccounts" => {
            token_request(&inner, &r, &body)
        }
        ("POST", None, _) => create(&inner, &r, &body),
        ("PUT", Some(_), sub) => replace(&inner, &r, &body, sub == Some("status"), &q),
        ("PATCH", Some(_), sub) if content_type.starts_with("application/apply-patch") => {
            apply(&inner, &r, &body, &q, sub == Some("status"))
        }
        ("PATCH", Some(_), sub) => {
            patch(&inner, &r, &body, &content_type, sub == Some("status"), &q)
        }
        ("DELETE", Some(_), None) => delete(&inner, &r),
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
            json!({}),
        ),
    }
}

fn not_found(r: &Route) -> Response {
    let name = r.name.clone().unwrap_or_default();
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", r.resource.plural),
        json!({"name": name, "kind": r.resource.plural}),
    )
}

fn get(inner: &Inner, r: &Route) -> Response {
    let s = inner.store.lock().expect("poisoned");
    match s.objects.get(&(
        key(r),
        r.namespace.clone(),
        r.name.clone().unwrap_or_default(),
    )) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => not_found(r),
    }
}

/// An object as `PartialObjectMetadata`: its metadata, nothing else.
fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

fn list(inner: &Inner, r: &Route, q: &BTreeMap<String, String>, meta_only: bool) -> Response {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // `continue` is opaque to clients: here, the list's resourceVersion and
    // the (namespace, name) after which the next page starts.
    let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let Some((rv, ns, name)) = b64
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<(String, String, String)>(&b).ok())
            else {
                return status(
                    400,
                    "BadRequest",
                    "invalid continue token".into(),
                    json!({}),
                );
            };
            (Some(rv), Some((ns, name)))
        }
        None => (None, None),
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let s = inner.store.lock().expect("poisoned");
    let res = key(r);
    let mut matching = s.objects.iter().filter(|((kind, ns, name), o)| {
        *kind == res
            && (r.namespace.is_empty() || *ns == r.namespace)
            && after
                .as_ref()
                .is_none_or(|(a_ns, a_name)| (ns, name) > (a_ns, a_name))
            && selected(q, o)
    });
    let mut items = Vec::new();
    let mut last = None;
    for ((_, ns, name), o) in matching.by_ref().take(limit) {
        items.push(if meta_only { partial(o) } else { o.clone() });
        last = Some((ns.clone(), name.clone()));
    }
    let rv = list_rv.unwrap_or_else(|| s.rv.to_string());
    let mut metadata = json!({"resourceVersion": rv});
    if matching.next().is_some() {
        let (ns, name) = last.expect("a full page");
        metadata["continue"] =
            json!(b64.encode(serde_json::to_vec(&(rv.clone(), ns, name)).expect("json")));
    }
    let (kind, api_version) = if meta_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (format!("{}List", r.resource.kind), r.resource.api_version())
    };
    axum::Json(
        json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items}),
    )
    .into_response()
}

fn watch(inner: &Inner, r: &Route, q: &BTreeMap<String, String>, meta_only: bool) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let mut rx = inner.events.subscribe();
    let (backlog, oldest) = {
        let s = inner.store.lock().expect("poisoned");
        let oldest = s.history.front().map(|e| e.rv).unwrap_or(s.rv);
        (
            s.history
                .iter()
                .filter(|e| e.rv > from)
                .cloned()
                .collect::<Vec<_>>(),
            oldest,
        )
    };
    let (res, ns, q) = (key(r), r.namespace.clone(), q.clone());
    // As the watch cache does: a modification that moves an object out of
    // the selection is DELETED for this watch, one that moves it in ADDED.
    let matches = move |e: &Event| -> Option<&'static str> {
        if e.resource != res || !(ns.is_empty() || e.namespace == ns) {
            return None;
        }
        let now = selected(&q, &e.object);
        let before = e.previous.as_ref().is_some_and(|p| selected(&q, p));
        match (e.kind, before, now) {
            ("MODIFIED", true, false) => Some("DELETED"),
            ("MODIFIED", false, true) => Some("ADDED"),
            ("DELETED", true, _) => Some("DELETED"),
            (kind, _, true) if kind != "DELETED" => Some(kind),
            _ => None,
        }
    };
    let gone = from != 0 && from + 1 < oldest;
    let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let line = |v: Value| Bytes::from(format!("{v}\n"));
        let shown = move |o: &Value| if meta_only { partial(o) } else { o.clone() };
        if gone {
            let st = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({oldest})"), "reason": "Expired", "code": 410}});
            let _ = tx.send(line(st)).await;
            return;
        }
        let mut last = from;
        for (e, kind) in backlog
            .into_iter()
            .filter_map(|e| matches(&e).map(|k| (e, k)))
        {
            last = e.rv;
            if tx
                .send(line(json!({"type": kind, "object": shown(&e.object)})))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                ev = rx.recv() => match ev {
                    Ok(e) if e.rv > last => if let Some(kind) = matches(&e) {
                        last = e.rv;
                        if tx.send(line(json!({"type": kind, "object": shown(&e.object)}))).await.is_err() { return; }
                    },
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(out, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        status(
            400,
            "BadRequest",
            format!("the body is not JSON: {e}"),
            json!({}),
        )
    })
}

fn create(inner: &Inner, r: &Route, body: &[u8]) -> Response {
    let mut obj = match parse_body(body) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let mut s = inner.store.lock().expect("poisoned");
    *s.requests
        .entry(format!("create {}", r.resource.plural))
        .or_default() += 1;
    let name = match (
        obj["metadata"]["name"].as_str(),
        obj["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(prefix)) => {
            s.uid += 1;
            format!("{prefix}{:05x}", s.uid)
        }
        _ => {
            return status(
                422,
                "Invalid",
                format!(
                    "{} is invalid: metadata.name: Required value",
                    r.resource.kind
                ),
                json!({}),
            )
        }
    };
    if s.objects
        .contains_key(&(key(r), r.namespace.clone(), name.clone()))
    {
        return status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.resource.plural),
            json!({"name": name, "kind": r.resource.plural}),
        );
    }
    if r.resource.kind == "Secret" {
        fold_string_data(&mut obj);
    }
    if r.resource.kind == "Secret"
        && obj["type"] == "kubernetes.io/dockerconfigjson"
        && obj["data"][".dockerconfigjson"].is_null()
    {
        return status(
            422,
            "Invalid",
            format!("Secret \"{name}\" is invalid: data[.dockerconfigjson]: Required value"),
            json!({"name": name, "kind": "Secret", "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "data[.dockerconfigjson]"}]}),
        );
    }
    s.uid += 1;
    let uid = format!("00000000-0000-4000-8000-{:012x}", s.uid);
    obj["apiVersion"] = json!(r.resource.api_version());
    obj["kind"] = json!(r.resource.kind);
    let meta = &mut obj["metadata"];
    meta["name"] = json!(name);
    if r.resource.namespaced {
        meta["namespace"] = json!(r.namespace);
    }
    meta["uid"] = json!(uid);
    meta["creationTimestamp"] = json!(rfc3339(now()));
    meta["generation"] = json!(1);
    let created = inner.commit(&mut s, r, "ADDED", obj);
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

/// Applies `new` over `old` honouring the status subresource and generation.
fn merge_update(old: &Value, mut new: Value, status_only: bool) -> Value {
    if status_only {
        let mut out = old.clone();
        out["status"] = new["status"].take();
        return out;
    }
    // `stringData` is folded on every write, not only on create.
    if new["kind"] == "Secret" {
        fold_string_data(&mut new);
    }
    // The main resource ignores status changes (status subresource semantics);
    // spec-like changes bump the generation.
    new["status"] = old["status"].clone();
    if new.get("status").is_some_and(Value::is_null) {
        new.as_object_mut().expect("object").remove("status");
    }
    for immutable in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "managedFields",
    ] {
        new["metadata"][immutable] = old["metadata"][immutable].clone();
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = json!(if strip(old) != strip(&new) {
        generation + 1
    } else {
        generation
    });
    if old["metadata"]["deletionTimestamp"].is_string() {
        new["metadata"]["deletionTimestamp"] = old["metadata"]["deletionTimestamp"].clone();
    }
    new
}

fn store_update(
    inner: &Inner,
    r: &Route,
    verb: &str,
    manager: &str,
    update: impl FnOnce(&Value) -> Result<Value, Response>,
) -> Response {
    let mut s = inner.store.lock().expect("poisoned");
    let k = (
        key(r),
        r.namespace.clone(),
        r.name.clone().unwrap_or_default(),
    );
    let Some(old) = s.objects.get(&k).cloned() else {
        return not_found(r);
    };
    let mut new = match update(&old) {
        Ok(n) => n,
        Err(e) => return e,
    };
    record_update(&old, &mut new, manager);
    *s.requests
        .entry(format!("{verb} {}", r.resource.plural))
        .or_default() += 1;
    let name = k.2.clone();
    if new == old {
        return axum::Json(old).into_response();
    }
    // A finalizer-held object goes once its last finalizer is removed.
    let finalizers_gone = new["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    if old["metadata"]["deletionTimestamp"].is_string() && finalizers_gone {
        let uid = old["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let gone = inner.commit(&mut s, r, "DELETED", new);
        inner.collect_garbage(&mut s, &uid);
        let _ = name;
        return axum::Json(gone).into_response();
    }
    axum::Json(inner.commit(&mut s, r, "MODIFIED", new)).into_response()
}

fn conflict(r: &Route) -> Response {
    let name = r.name.clone().unwrap_or_default();
    status(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", r.resource.plural), json!({"name": name, "kind": r.resource.plural}))
}

/// `stringData` is write-only: the API server folds it into `data` (base64).
fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    if let Some(Value::Object(string_data)) =
        obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

fn replace(
    inner: &Inner,
    r: &Route,
    body: &[u8],
    status_only: bool,
    q: &BTreeMap<String, String>,
) -> Response {
    let new = match parse_body(body) {
        Ok(o) => o,
        Err(e) => return e,
    };
    store_update(inner, r, "update", &manager_of(q), |old| {
        let rv = new["metadata"]["resourceVersion"].as_str();
        if rv.is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str()) {
            return Err(conflict(r));
        }
        Ok(merge_update(old, new, status_only))
    })
}

fn patch(
    inner: &Inner,
    r: &Route,
    body: &[u8],
    content_type: &str,
    status_only: bool,
    q: &BTreeMap<String, String>,
) -> Response {
    let body = match parse_body(body) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let kind = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    store_update(inner, r, "patch", &manager_of(q), |old| {
        let mut target = old.clone();
        match kind.as_str() {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                json_patch::merge(&mut target, &body)
            }
            "application/json-patch+json" => {
                let p: json_patch::Patch = serde_json::from_value(body).map_err(|e| {
                    status(
                        400,
                        "BadRequest",
                        format!("invalid JSON patch: {e}"),
                        json!({}),
                    )
                })?;
                json_patch::patch(&mut target, &p).map_err(|e| {
                    status(
                        422,
                        "Invalid",
                        format!("the JSON patch could not be applied: {e}"),
                        json!({}),
                    )
                })?;
            }
            other => {
                return Err(status(
                    415,
                    "UnsupportedMediaType",
                    format!("the patch type {other:?} is not supported"),
                    json!({}),
                ))
            }
        }
        let rv = target["metadata"]["resourceVersion"].as_str();
        if rv.is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str()) {
            return Err(conflict(r));
        }
        Ok(merge_update(old, target, status_only))
    })
}

fn delete(inner: &Inner, r: &Route) -> Response {
    let mut s = inner.store.lock().expect("poisoned");
    let k = (
        key(r),
        r.namespace.clone(),
        r.name.clone().unwrap_or_default(),
    );
    let Some(mut obj) = s.objects.get(&k).cloned() else {
        return not_found(r);
    };
    *s.requests
        .entry(format!("delete {}", r.resource.plural))
        .or_default() += 1;
    if obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        if obj["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = json!(rfc3339(now()));
            obj = inner.commit(&mut s, r, "MODIFIED", obj);
        }
        return (StatusCode::ACCEPTED, axum::Json(obj)).into_response();
    }
    let uid = obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let gone = inner.commit(&mut s, r, "DELETED", obj);
    inner.collect_garbage(&mut s, &uid);
    axum::Json(gone).into_response()
}

/// How long the real kube-apiserver caches a successful token
/// authentication: revocation shows only after it (kubernetes-facts.md).
pub const TOKEN_AUTH_CACHE: Duration = Duration::from_secs(10);

fn stored(inner: &Inner, plural: &str, namespace: &str, name: &str) -> Option<Value> {
    inner
        .store
        .lock()
        .expect("poisoned")
        .objects
        .get(&(
            format!("v1/{plural}"),
            namespace.to_string(),
            name.to_string(),
        ))
        .cloned()
}

fn token_request(inner: &Inner, r: &Route, body: &[u8]) -> Response {
    let req = match parse_body(body) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let sa = r.name.clone().unwrap_or_default();
    let Some(account) = stored(inner, "serviceaccounts", &r.namespace, &sa) else {
        return not_found(r);
    };
    let seconds = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    if seconds < 600 {
        return status(422, "Invalid", "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes".into(), json!({}));
    }
    let audience = req["spec"]["audiences"][0]
        .as_str()
        .unwrap_or("https://kubernetes.default.svc")
        .to_string();
    let mut claims = inner.issuer.claims(&r.namespace, &sa, &audience, seconds);
    // As the real server: the account's own uid; pod and node claims only
    // for a token bound to a pod (boundObjectRef), which must exist.
    let k = &mut claims["kubernetes.io"];
    k["serviceaccount"]["uid"] = account["metadata"]["uid"].clone();
    let k = k.as_object_mut().expect("object");
    k.remove("pod");
    k.remove("node");
    let bound = &req["spec"]["boundObjectRef"];
    if bound["kind"] == "Pod" {
        let name = bound["name"].as_str().unwrap_or_default();
        let Some(pod) = stored(inner, "pods", &r.namespace, name) else {
            return status(
                404,
                "NotFound",
                format!("pods \"{name}\" not found"),
                json!({"name": name, "kind": "pods"}),
            );
        };
        k.insert(
            "pod".into(),
            json!({"name": name, "uid": pod["metadata"]["uid"]}),
        );
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            k.insert("node".into(), json!({"name": node}));
        }
    }
    let token = inner.issuer.sign(&claims);
    let mut out = req.clone();
    out["status"] = json!({"token": token, "expirationTimestamp": rfc3339(now() + seconds)});
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

/// The verdict on a token whose signature and audience are fine: its
/// service account (and pod, when bound) must still exist, same uid.
fn token_still_valid(inner: &Inner, token: &str) -> Result<(), String> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Value =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
    let k = &claims["kubernetes.io"];
    let ns = k["namespace"].as_str().unwrap_or_default();
    let sa = k["serviceaccount"]["name"].as_str().unwrap_or_default();
    match stored(inner, "serviceaccounts", ns, sa) {
        Some(a) if a["metadata"]["uid"] == k["serviceaccount"]["uid"] => {}
        _ => {
            return Err(format!(
                "[invalid bearer token, serviceaccounts \"{sa}\" not found]"
            ))
        }
    }
    if let Some(pod) = k.get("pod") {
        let name = pod["name"].as_str().unwrap_or_default();
        match stored(inner, "pods", ns, name) {
            Some(p) if p["metadata"]["uid"] == pod["uid"] => {}
            _ => {
                return Err(
                    "[invalid bearer token, service account token has been invalidated]".into(),
                )
            }
        }
    }
    Ok(())
}

fn token_review(inner: &Inner, body: &[u8]) -> Response {
    let req = match parse_body(body) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let token = req["spec"]["token"].as_str().unwrap_or_default();
    let audiences: Vec<String> = req["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let key = (token.to_string(), audiences.clone());
    let cached = {
        let mut s = inner.store.lock().expect("poisoned");
        *s.requests.entry("create tokenreviews".into()).or_default() += 1;
        s.auth_cache
            .retain(|_, (at, _)| at.elapsed() < TOKEN_AUTH_CACHE);
        s.auth_cache.get(&key).map(|(_, v)| v.clone())
    };
    let verdict = match cached {
        Some(v) => Ok(v),
        None => inner.issuer.review(token, &audiences).and_then(|v| {
            token_still_valid(inner, token)?;
            inner
                .store
                .lock()
                .expect("poisoned")
                .auth_cache
                .insert(key, (std::time::Instant::now(), v.clone()));
            Ok(v)
        }),
    };
    let mut out = req.clone();
    out["status"] = match verdict {
        Ok((username, auds)) => {
            json!({"authenticated": true, "user": {"username": username, "groups": ["system:serviceaccounts", "system:authenticated"]}, "audiences": auds})
        }
        Err(e) => json!({"user": {}, "error": e}),
    };
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

// ---- Server-side apply ------------------------------------------------------
//
// Field ownership is kept in `metadata.managedFields` (FieldsV1), as the API
// server does. Simplifications: maps recurse; every list is atomic (owned
// whole, as `ServiceAccount.imagePullSecrets` is on a real server; lists with
// merge keys such as `containers` are atomic here too).

/// Metadata the server owns; never part of a field set.
const SERVER_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
];

type FieldPath = Vec<String>;

fn manager_of(q: &BTreeMap<String, String>) -> String {
    q.get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".to_string())
}

/// Leaf paths of an object (maps recurse, lists and scalars are leaves).
fn leaf_paths(v: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let top = prefix.is_empty();
                if top && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if prefix.len() == 1
                    && prefix[0] == "metadata"
                    && SERVER_FIELDS.contains(&k.as_str())
                {
                    continue;
                }
                prefix.push(k.clone());
                leaf_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
        }
    }
}

fn paths_of(v: &Value) -> Vec<FieldPath> {
    let mut out = Vec::new();
    leaf_paths(v, &mut Vec::new(), &mut out);
    out
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = json!({});
        }
        cur = cur.get_mut(k).expect("just made");
    }
    cur[path[path.len() - 1].as_str()] = value;
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn to_fields_v1(paths: &[FieldPath]) -> Value {
    let mut root = json!({});
    for p in paths {
        let keyed: Vec<String> = p.iter().map(|k| format!("f:{k}")).collect();
        set_path(&mut root, &keyed, json!({}));
    }
    root
}

fn from_fields_v1(v: &Value) -> Vec<FieldPath> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
        let m = v.as_object().filter(|m| !m.is_empty());
        match m {
            None => out.push(prefix.clone()),
            Some(m) => {
                for (k, child) in m {
                    prefix.push(k.trim_start_matches("f:").to_string());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
        }
    }
    walk(v, &mut Vec::new(), &mut out);
    out.retain(|p| !p.is_empty());
    out
}

/// (manager, operation, paths) from `metadata.managedFields`.
fn managed(obj: &Value) -> Vec<(String, String, Vec<FieldPath>)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                        from_fields_v1(&e["fieldsV1"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_managed(obj: &mut Value, entries: &[(String, String, Vec<FieldPath>)]) {
    let api_version = obj["apiVersion"].clone();
    let list: Vec<Value> = entries
        .iter()
        .filter(|(_, _, paths)| !paths.is_empty())
        .map(|(m, op, paths)| json!({"manager": m, "operation": op, "apiVersion": api_version, "time": rfc3339(now()), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}))
        .collect();
    if list.is_empty() {
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(list);
    }
}

/// Does `a` overlap `b` (one is a prefix of the other)?
fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// A non-apply write: the fields it changed now belong to `manager` (Update).
fn record_update(old: &Value, new: &mut Value, manager: &str) {
    let changed: Vec<FieldPath> = {
        let mut all = paths_of(old);
        all.extend(paths_of(new));
        all.sort();
        all.dedup();
        all.into_iter()
            .filter(|p| lookup(old, p) != lookup(new, p))
            .collect()
    };
    if changed.is_empty() {
        return;
    }
    let mut entries = managed(old);
    for (_, _, paths) in entries.iter_mut() {
        paths.retain(|p| !changed.iter().any(|c| overlaps(p, c)));
    }
    let present: Vec<FieldPath> = changed
        .into_iter()
        .filter(|p| lookup(new, p).is_some())
        .collect();
    match entries
        .iter_mut()
        .find(|(m, op, _)| m == manager && op == "Update")
    {
        Some((_, _, paths)) => paths.extend(present),
        None => entries.push((manager.to_string(), "Update".to_string(), present)),
    }
    write_managed(new, &entries);
}

fn apply(
    inner: &Inner,
    r: &Route,
    body: &[u8],
    q: &BTreeMap<String, String>,
    status_only: bool,
) -> Response {
    let Some(manager) = q.get("fieldManager").cloned() else {
        return status(400, "BadRequest", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(), json!({}));
    };
    let force = q.get("force").is_some_and(|f| f == "true");
    let applied: Value =
        match serde_json::from_slice(body).or_else(|_| serde_yaml::from_slice::<Value>(body)) {
            Ok(v) => v,
            Err(e) => {
                return status(
                    400,
                    "BadRequest",
                    format!("the apply body is not JSON or YAML: {e}"),
                    json!({}),
                )
            }
        };
    let mut applied_paths = paths_of(&applied);
    if status_only {
        applied_paths.retain(|p| p.first().is_some_and(|k| k == "status"));
    } else {
        applied_paths.retain(|p| p.first().is_none_or(|k| k != "status"));
    }
    let exists = {
        let s = inner.store.lock().expect("poisoned");
        s.objects.contains_key(&(
            key(r),
            r.namespace.clone(),
            r.name.clone().unwrap_or_default(),
        ))
    };
    if !exists {
        let mut obj = applied.clone();
        obj["metadata"]["name"] = json!(r.name.clone().unwrap_or_default());
        write_managed(&mut obj, &[(manager, "Apply".into(), applied_paths)]);
        let resp = create(inner, r, &serde_json::to_vec(&obj).expect("json"));
        let mut s = inner.store.lock().expect("poisoned");
        *s.requests
            .entry(format!("apply {}", r.resource.plural))
            .or_default() += 1;
        return resp;
    }
    let mut s = inner.store.lock().expect("poisoned");
    *s.requests
        .entry(format!("apply {}", r.resource.plural))
        .or_default() += 1;
    let k = (
        key(r),
        r.namespace.clone(),
        r.name.clone().unwrap_or_default(),
    );
    let old = s.objects.get(&k).cloned().expect("checked");
    let mut entries = managed(&old);
    // Conflicts: another manager owns a field this apply sets to another value.
    let mut conflicts = Vec::new();
    for (m, _, paths) in &entries {
        if *m == manager {
            continue;
        }
        for p in paths {
            if let Some(a) = applied_paths.iter().find(|a| overlaps(a, p)) {
                if lookup(&old, a) != lookup(&applied, a) {
                    conflicts.push((m.clone(), format!(".{}", a.join("."))));
                }
            }
        }
    }
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        let fields: Vec<String> = conflicts
            .iter()
            .map(|(m, f)| format!("conflict with \"{m}\": {f}"))
            .collect();
        let causes: Vec<Value> = conflicts.iter().map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f})).collect();
        let n = conflicts.len();
        let plural = if n == 1 { "" } else { "s" };
        return status(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{plural}: {}",
                fields.join(", ")
            ),
            json!({"causes": causes}),
        );
    }
    let mut new = old.clone();
    // Fields this manager applied before and no longer applies are removed,
    // unless someone else also owns them.
    let previous: Vec<FieldPath> = entries
        .iter()
        .filter(|(m, op, _)| *m == manager && op == "Apply")
        .flat_map(|(_, _, p)| p.clone())
        .collect();
    for p in previous.iter().filter(|p| !applied_paths.contains(p)) {
        let shared = entries
            .iter()
            .any(|(m, _, paths)| *m != manager && paths.iter().any(|q| overlaps(q, p)));
        if !shared {
            remove_path(&mut new, p);
        }
    }
    for p in &applied_paths {
        if let Some(v) = lookup(&applied, p) {
            set_path(&mut new, p, v.clone());
        }
    }
    // Ownership: this manager's Apply set is exactly what it applied; forced
    // fields leave their previous owners.
    for (m, _, paths) in entries.iter_mut() {
        if *m != manager {
            paths.retain(|p| !applied_paths.iter().any(|a| overlaps(a, p)));
        }
    }
    entries.retain(|(m, op, _)| !(*m == manager && op == "Apply"));
    entries.push((manager, "Apply".into(), applied_paths));
    let mut new = merge_update(&old, new, status_only);
    write_managed(&mut new, &entries);
    if new == old {
        return axum::Json(old).into_response();
    }
    axum::Json(inner.commit(&mut s, r, "MODIFIED", new)).into_response()
}
