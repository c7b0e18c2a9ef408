//! The verbs on stored objects: get, list, watch, create, replace, patch,
//! apply, delete — each a `Response` from the store.

#![allow(clippy::result_large_err)]

use super::*;

pub(super) fn not_found(r: &Route) -> Response {
    let name = r.name.clone().unwrap_or_default();
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", r.resource.plural),
        json!({"name": name, "kind": r.resource.plural}),
    )
}

pub(super) fn get(inner: &Inner, r: &Route) -> Response {
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
pub(super) fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

pub(super) fn list(
    inner: &Inner,
    r: &Route,
    q: &BTreeMap<String, String>,
    meta_only: bool,
) -> Response {
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

pub(super) fn watch(
    inner: &Inner,
    r: &Route,
    q: &BTreeMap<String, String>,
    meta_only: bool,
) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    // A streaming list: the current objects as ADDED, then a bookmark
    // marking the end of the initial state (v1.36 with
    // `sendInitialEvents=true&resourceVersionMatch=NotOlderThan`).
    let initial = bookmarks && q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let (res, ns, q) = (key(r), r.namespace.clone(), q.clone());
    let mut rx = inner.events.subscribe();
    let (backlog, oldest, current) = {
        let s = inner.store.lock().expect("poisoned");
        let oldest = s.history.front().map(|e| e.rv).unwrap_or(s.rv);
        let backlog: Vec<(Value, &'static str)> = if initial {
            s.objects
                .iter()
                .filter(|((k, n, _), o)| {
                    *k == res && (ns.is_empty() || *n == ns) && selected(&q, o)
                })
                .map(|(_, o)| (o.clone(), "ADDED"))
                .collect()
        } else {
            Vec::new()
        };
        let history = if initial {
            Vec::new()
        } else {
            s.history
                .iter()
                .filter(|e| e.rv > from)
                .cloned()
                .collect::<Vec<_>>()
        };
        ((backlog, history), oldest, s.rv)
    };
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
    let gone = !initial && from != 0 && from + 1 < oldest;
    let every = *inner.bookmark_interval.lock().expect("poisoned");
    let (kind, api_version) = (r.resource.kind, r.resource.api_version());
    // A bookmark carries only kind, apiVersion and metadata (v1.36).
    let bookmark = move |rv: u64, end_of_initial: bool| {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if end_of_initial {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": metadata}})
    };
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
        let (objects, history) = backlog;
        // Every event up to `last` has been delivered (or was not ours).
        let mut last = if initial { current } else { from };
        for (o, kind) in objects {
            if tx
                .send(line(json!({"type": kind, "object": shown(&o)})))
                .await
                .is_err()
            {
                return;
            }
        }
        if initial && tx.send(line(bookmark(current, true))).await.is_err() {
            return;
        }
        for e in history {
            last = last.max(e.rv);
            let Some(kind) = matches(&e) else { continue };
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
        // Periodic bookmarks (about once a minute on a real server), only
        // when asked for.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    // Deliver what is already queued first: a bookmark
                    // promises every event up to its version was sent.
                    while let Ok(e) = rx.try_recv() {
                        if e.rv <= last { continue; }
                        last = e.rv;
                        if let Some(kind) = matches(&e) {
                            if tx.send(line(json!({"type": kind, "object": shown(&e.object)}))).await.is_err() { return; }
                        }
                    }
                    if tx.send(line(bookmark(last, false))).await.is_err() { return; }
                }
                ev = rx.recv() => match ev {
                    Ok(e) if e.rv > last => {
                        last = e.rv;
                        if let Some(kind) = matches(&e) {
                            if tx.send(line(json!({"type": kind, "object": shown(&e.object)}))).await.is_err() { return; }
                        }
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

pub(super) fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        status(
            400,
            "BadRequest",
            format!("the body is not JSON: {e}"),
            json!({}),
        )
    })
}

pub(super) fn create(inner: &Inner, r: &Route, body: &[u8]) -> Response {
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
    // Admission before storage: NamespaceLifecycle refuses first.
    if let Some(refused) = inner.admit_create(&s, r, &name) {
        return refused;
    }
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
    if namespaces::is_namespace(r) {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
        obj["status"]["phase"] = json!("Active");
    }
    let created = inner.commit(&mut s, r, "ADDED", obj);
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

pub(super) fn store_update(
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

pub(super) fn conflict(r: &Route) -> Response {
    let name = r.name.clone().unwrap_or_default();
    status(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", r.resource.plural), json!({"name": name, "kind": r.resource.plural}))
}

/// `stringData` is write-only: the API server folds it into `data` (base64).
pub(super) fn fold_string_data(obj: &mut Value) {
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

pub(super) fn replace(
    inner: &Inner,
    r: &Route,
    body: &[u8],
    status_only: bool,
    q: &BTreeMap<String, String>,
) -> Response {
    let mut new = match parse_body(body) {
        Ok(o) => o,
        Err(e) => return e,
    };
    // As on a real server, the route says what the body is: `stringData` is
    // folded even when the body names no `kind`.
    if r.resource.kind == "Secret" {
        fold_string_data(&mut new);
    }
    store_update(inner, r, "update", &manager_of(q), |old| {
        let rv = new["metadata"]["resourceVersion"].as_str();
        if rv.is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str()) {
            return Err(conflict(r));
        }
        Ok(merge_update(old, new, status_only))
    })
}

pub(super) fn patch(
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
            "application/merge-patch+json" => json_patch::merge(&mut target, &body),
            "application/strategic-merge-patch+json" if r.resource.is_custom() => {
                return Err(status(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                    json!({}),
                ))
            }
            "application/strategic-merge-patch+json" => {
                strategic::merge(r.resource.kind, &mut target, &body)
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

pub(super) fn delete(inner: &Inner, r: &Route) -> Response {
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
    if namespaces::is_namespace(r) {
        return inner.terminate_namespace(&mut s, r, obj);
    }
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

pub(super) fn stored(inner: &Inner, plural: &str, namespace: &str, name: &str) -> Option<Value> {
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

pub(super) fn apply(
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
        match serde_json::from_slice(body).or_else(|_| serde_saphyr::from_slice::<Value>(body)) {
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
    let applied_paths = applied_paths(&applied, status_only);
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
    let new = match apply_fields(&old, &applied, applied_paths, &manager, force, status_only) {
        Ok(new) => new,
        Err(conflicts) => {
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
    };
    if new == old {
        return axum::Json(old).into_response();
    }
    axum::Json(inner.commit(&mut s, r, "MODIFIED", new)).into_response()
}
