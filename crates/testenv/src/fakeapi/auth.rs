//! TokenRequest and TokenReview, answered as kube-apiserver does.

#![allow(clippy::result_large_err)]

use super::*;

/// How long the real kube-apiserver caches a successful token
/// authentication: revocation shows only after it (kubernetes-facts.md).
pub const TOKEN_AUTH_CACHE: Duration = Duration::from_secs(10);

pub(super) fn token_request(inner: &Inner, r: &Route, body: &[u8]) -> Response {
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
pub(super) fn token_still_valid(inner: &Inner, token: &str) -> Result<(), String> {
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

pub(super) fn token_review(inner: &Inner, body: &[u8]) -> Response {
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
