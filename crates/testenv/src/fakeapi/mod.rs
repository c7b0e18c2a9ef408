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
//! history; `BOOKMARK`s when asked — periodic, and after the initial
//! objects of a streaming list, see [`FakeApi::set_bookmark_interval`]),
//! create (409 AlreadyExists, `generateName`; 404 in a namespace that does
//! not exist, 403 `NamespaceTerminating` in one being deleted),
//! namespace deletion (`Terminating` at once, contents removed by a
//! namespace controller, [`FakeApi::set_namespace_controller`]), replace
//! (409 Conflict on a stale `resourceVersion`), merge patch, strategic
//! merge patch (lists with a `patchMergeKey` merged by key; 415 for custom
//! resources), JSON patch, server-side apply (field managers in `managedFields`,
//! 409 conflicts on fields another manager owns unless `force`, atomic lists
//! and pod containers merged by name,
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
//! - server-side apply merges by key only the `listType=map` lists it knows
//!   (the `containers` and `initContainers` of a Pod and of built-in pod
//!   templates, by `name`); every other list is atomic, `listType=set` and
//!   a CRD schema's `x-kubernetes-list-type` included; an element's own
//!   `.` entry is not written in `managedFields`;
//! - strategic merge patch knows the merge keys of the pod template's lists
//!   and `ServiceAccount.secrets` only, and none of `$retainKeys`,
//!   `$setElementOrder` or primitive merge lists;
//! - the namespace controller runs every 100 ms (the real one took ~4 s) and
//!   deletes contents at once, with no discovery of kinds it was not given;
//! - a new namespace has its `default` ServiceAccount never (the real
//!   controller-manager creates one a moment later);
//! - periodic bookmarks carry the last version this watch has delivered, a
//!   real server's the watch cache's (never lower);
//! - `limit`/`continue` page in (namespace, name) order, but later pages show
//!   the current state rather than a snapshot at the first page's
//!   resourceVersion (which every page reports);
//! - resources must be registered ([`FakeApi::RESOURCES`] lists the built-in ones);
//! - watch history keeps the last 10,000 events; older versions get 410;
//! - garbage collection is immediate and foreground-like, not by a controller;
//! - no other controllers either: a Deployment makes no ReplicaSet or Pod, a
//!   Pod never runs (tests write its `status` as a kubelet would).
//!
//! Modules: `routing` (paths, queries, the request log, dispatch),
//! `selectors`, `apply` and `strategic` (pure: label/field selectors;
//! server-side apply's field ownership and merge; strategic merge patch),
//! `verbs` (the store's get/list/watch/create/replace/patch/apply/delete),
//! `namespaces` (lifecycle), `auth` (TokenRequest, TokenReview).

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

mod apply;
mod auth;
mod namespaces;
mod routing;
mod selectors;
mod strategic;
mod verbs;

use apply::*;
use auth::*;
use routing::*;
use selectors::*;
use verbs::*;

pub use auth::TOKEN_AUTH_CACHE;
pub use selectors::labels_match;

fn rfc3339(t: i64) -> String {
    pullbroker_core::time::UnixTime(t).rfc3339()
}

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
    /// A custom resource (a CRD's), not one kube-apiserver builds in.
    fn is_custom(&self) -> bool {
        !(self.group.is_empty() || self.group == "apps" || self.group.ends_with(".k8s.io"))
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const HISTORY: usize = 10_000;

/// How often a real API server sends a watch bookmark (about once a minute).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

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
    /// Writes carried out before the rest are refused ([`FakeApi::refuse_writes_after`]).
    writes_left: Mutex<Option<usize>>,
    /// What `/version` answers ([`FakeApi::set_version`]).
    version: Mutex<(u32, u32)>,
    /// Whether the namespace controller runs by itself
    /// ([`FakeApi::set_namespace_controller`]).
    namespace_controller: std::sync::atomic::AtomicBool,
    /// How often a watch that allows bookmarks gets one
    /// ([`FakeApi::set_bookmark_interval`]).
    bookmark_interval: Mutex<Duration>,
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
            version: Mutex::new((1, 36)),
            writes_left: Mutex::new(None),
            namespace_controller: std::sync::atomic::AtomicBool::new(true),
            bookmark_interval: Mutex::new(BOOKMARK_INTERVAL),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let sweeper = inner.clone();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(namespaces::SWEEP);
                    loop {
                        tick.tick().await;
                        if sweeper
                            .namespace_controller
                            .load(std::sync::atomic::Ordering::SeqCst)
                        {
                            let mut s = sweeper.store.lock().expect("poisoned");
                            sweeper.sweep_namespaces(&mut s);
                        }
                    }
                });
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
    pub fn set_version(&self, major: u32, minor: u32) {
        *self.inner.version.lock().expect("poisoned") = (major, minor);
    }

    pub fn set_hung(&self, hung: bool) {
        self.inner.hung.send_replace(hung);
    }

    /// Carries out the next `n` writes (create, update, patch, delete), then
    /// answers every later one 503 without touching anything, until
    /// [`FakeApi::allow_writes`]: a component stopped at an exact point of
    /// its work, whatever the machine's speed.
    pub fn refuse_writes_after(&self, n: usize) {
        *self.inner.writes_left.lock().expect("poisoned") = Some(n);
    }

    /// Whether writes are being refused ([`FakeApi::refuse_writes_after`]'s
    /// budget is spent).
    pub fn refusing_writes(&self) -> bool {
        *self.inner.writes_left.lock().expect("poisoned") == Some(0)
    }

    /// Ends [`FakeApi::refuse_writes_after`].
    pub fn allow_writes(&self) {
        *self.inner.writes_left.lock().expect("poisoned") = None;
    }

    /// Starts (`true`, the default) or stops the namespace controller that
    /// empties and removes terminating namespaces. Stopped, a deleted
    /// namespace stays `Terminating` with its contents until
    /// [`FakeApi::run_namespace_controller`]: the window in which creates are
    /// refused and updates still succeed, held open for a test.
    pub fn set_namespace_controller(&self, running: bool) {
        self.inner
            .namespace_controller
            .store(running, std::sync::atomic::Ordering::SeqCst);
    }

    /// How often watches that allow bookmarks get one, from the next watch
    /// on ([`BOOKMARK_INTERVAL`] by default, as on a real server).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.inner.bookmark_interval.lock().expect("poisoned") = every;
    }

    /// One pass of the namespace controller, now.
    pub fn run_namespace_controller(&self) {
        let mut s = self.inner.store.lock().expect("poisoned");
        self.inner.sweep_namespaces(&mut s);
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
