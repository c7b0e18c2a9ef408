//! A minimal distribution token server for the token-auth test registry
//! (the broker's real one is built on top of the core policy later). It signs
//! ES256 JWTs with a `kid` in libtrust format, as registry 2.8 requires.
//!
//! Authenticated users (Basic `testuser`, OAuth2 password grant, or the
//! refresh token [`IDENTITY_TOKEN`]) get the actions they ask for; anonymous
//! callers get a token with no access; a wrong password gets 401.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use crate::registry::TokenAuth;
use crate::{PASSWORD, USER};

/// The refresh token (docker config `identitytoken`) this server accepts for [`USER`].
pub const IDENTITY_TOKEN: &str = "refresh-CANARY-1d3nt1ty";
pub const ISSUER: &str = "pullbroker-test-issuer";
pub const SERVICE: &str = "pullbroker-test-registry";

struct ServerState {
    key: jsonwebtoken::EncodingKey,
    kid: String,
    issued: AtomicUsize,
    refused: AtomicUsize,
    by_scope: Mutex<HashMap<String, usize>>,
}

pub struct TokenServer {
    pub addr: SocketAddr,
    pub cert_path: PathBuf,
    state: Arc<ServerState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    pub fn start(dir: &Path) -> Result<TokenServer, String> {
        let signing = crate::pki::signing_key(ISSUER)?;
        let cert_path = dir.join("token-signer.crt");
        std::fs::write(&cert_path, &signing.cert_pem).map_err(|e| e.to_string())?;
        let state = Arc::new(ServerState {
            key: jsonwebtoken::EncodingKey::from_ec_pem(signing.key_pem.as_bytes())
                .map_err(|e| e.to_string())?,
            kid: signing.kid,
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            by_scope: Mutex::default(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let app = Router::new()
            .route("/token", get(get_token).post(post_token))
            .with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-token-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(TokenServer {
            addr,
            cert_path,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The registry configuration that trusts this server.
    pub fn registry_auth(&self) -> TokenAuth {
        TokenAuth {
            realm: format!("http://{}/token", self.addr),
            service: SERVICE.to_string(),
            issuer: ISSUER.to_string(),
            rootcertbundle: self.cert_path.clone(),
        }
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Tokens issued so far whose request named `scope`.
    pub fn issued_for(&self, scope: &str) -> usize {
        self.state
            .by_scope
            .lock()
            .expect("poisoned")
            .get(scope)
            .copied()
            .unwrap_or(0)
    }

    /// Requests refused (bad credentials) so far.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Caller {
    Anonymous,
    User,
    Refused,
}

fn basic_caller(headers: &HeaderMap) -> Caller {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Caller::Anonymous;
    };
    let decoded = value
        .strip_prefix("Basic ")
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((u, p)) if u == USER && p == PASSWORD => Caller::User,
        _ => Caller::Refused,
    }
}

async fn get_token(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let scopes: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    issue(&s, basic_caller(&headers), &scopes)
}

async fn post_token(
    State(s): State<Arc<ServerState>>,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let caller = match field("grant_type") {
        Some("password")
            if field("username") == Some(USER) && field("password") == Some(PASSWORD) =>
        {
            Caller::User
        }
        Some("refresh_token") if field("refresh_token") == Some(IDENTITY_TOKEN) => Caller::User,
        _ => Caller::Refused,
    };
    // OAuth2 scopes are space-separated in one field.
    let scopes: Vec<&str> = field("scope")
        .map(|s| s.split(' ').collect())
        .unwrap_or_default();
    issue(&s, caller, &scopes)
}

fn issue(s: &ServerState, caller: Caller, scopes: &[&str]) -> Response {
    let access: Vec<serde_json::Value> = match caller {
        Caller::Refused => {
            s.refused.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::UNAUTHORIZED, Json(json!({"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}))).into_response();
        }
        Caller::Anonymous => Vec::new(),
        Caller::User => scopes
            .iter()
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect(),
    };
    {
        let mut by_scope = s.by_scope.lock().expect("poisoned");
        for scope in scopes {
            *by_scope.entry(scope.to_string()).or_default() += 1;
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let n = s.issued.fetch_add(1, Ordering::SeqCst);
    let claims = json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 5, "iat": now,
        "jti": format!("test-{now}-{n}"),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(s.kid.clone());
    match jsonwebtoken::encode(&header, &claims, &s.key) {
        Ok(t) => Json(json!({"token": t, "access_token": t, "expires_in": 300})).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
