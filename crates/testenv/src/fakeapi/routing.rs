//! Routing: which resource a path names, query strings, the request log,
//! and the one handler that dispatches to the verbs.

#![allow(clippy::result_large_err)]

use super::*;

pub(super) fn route(inner: &Inner, path: &str) -> Option<Route> {
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

pub(super) fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query().map(query_pairs).unwrap_or_default()
}

pub(super) fn query_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
pub(super) fn decode(s: &str) -> String {
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

/// Logs the request under the caller's bearer token (see [`crate::api_log`]).
pub(super) fn record(inner: &Inner, method: &Method, uri: &Uri, headers: &HeaderMap) {
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

pub(super) async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A hung server holds every request until it is released.
    let mut hung = inner.hung.subscribe();
    let _ = hung.wait_for(|h| !*h).await;
    // Past its write budget the server refuses every write.
    if matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
        let mut left = inner.writes_left.lock().expect("poisoned");
        match left.as_mut() {
            Some(0) => {
                return status(
                    503,
                    "ServiceUnavailable",
                    "writes refused (FakeApi::refuse_writes_after)".into(),
                    json!({}),
                )
            }
            Some(n) => *n -= 1,
            None => {}
        }
    }
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
        ("GET", "/version") => {
            // The fields a real v1.36 server answers with, `version.Info`.
            let (major, minor) = *inner.version.lock().expect("poisoned");
            return axum::Json(json!({"major": major.to_string(), "minor": minor.to_string(),
                "gitVersion": format!("v{major}.{minor}.0"), "gitCommit": "fake", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}))
            .into_response();
        }
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
