//! AWS's STS and ECR APIs on loopback: `moto` in server mode (PyPI
//! `moto[server]`, in the virtual environment the test command makes),
//! behind a relay the test steers.
//!
//! moto answers `GetAuthorizationToken` with an `expiresAt` fixed in 2015
//! (`../shared/registry-facts.md`); real ECR answers twelve hours ahead. The
//! relay passes every call to moto unchanged except that it rewrites that
//! date to the one the test chooses, and can refuse ECR calls the way ECR
//! refuses a role without `ecr:GetAuthorizationToken`. It records which
//! STS actions went by and the tokens moto issued.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process;
use crate::registry::free_port;

/// Where the test command installs moto (`scripts/test.sh`); overridden by
/// `PULLBROKER_MOTO_SERVER`.
const MOTO_SERVER: &str = "/opt/pullbroker-moto/bin/moto_server";

/// A running `moto_server`.
pub struct Moto {
    pub addr: SocketAddr,
    child: Child,
}

impl Moto {
    /// Starts moto on a free loopback port (20 s per attempt, three
    /// attempts if the port picked is taken).
    pub fn start() -> Result<Moto, String> {
        let bin = std::env::var("PULLBROKER_MOTO_SERVER").unwrap_or_else(|_| MOTO_SERVER.into());
        if !std::path::Path::new(&bin).exists() {
            return Err(format!(
                "{bin} is missing: scripts/test.sh installs moto[server] in /opt/pullbroker-moto"
            ));
        }
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run {bin}: {e}"))?;
            process::kill_at_exit(&child);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    last = format!("moto exited ({status})");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(Moto { addr, child });
                }
                if Instant::now() > deadline {
                    last = "moto not listening after 20 s".into();
                    process::forget(&child);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        process::forget(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the relay does and has seen.
#[derive(Debug, Default)]
pub struct RelayState {
    /// Rewrite ECR's `expiresAt` to now + this many seconds (`None`: pass
    /// moto's 2015 date through).
    pub expires_in: Option<i64>,
    /// Refuse `GetAuthorizationToken` with `AccessDeniedException`.
    pub deny_ecr: bool,
    /// STS actions and ECR targets, in order.
    pub calls: Vec<String>,
    /// The ECR passwords moto issued, in order.
    pub tokens: Vec<String>,
}

/// The relay in front of [`Moto`]: the endpoint the SDK is pointed at.
pub struct AwsRelay {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<RelayState>>,
    _moto: Moto,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl AwsRelay {
    /// moto and its relay, on a runtime thread of their own so that any
    /// test (blocking or async) can use them.
    pub fn start() -> Result<AwsRelay, String> {
        let moto = Moto::start()?;
        let state = Arc::new(Mutex::new(RelayState {
            expires_in: Some(3600),
            ..RelayState::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (st, upstream) = (state.clone(), moto.addr);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        relay(st.clone(), upstream, method, uri, headers, body)
                    },
                );
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(AwsRelay {
            addr,
            state,
            _moto: moto,
            _stop: stop,
        })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, f: impl FnOnce(&mut RelayState)) {
        f(&mut self.state.lock().expect("poisoned"));
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().expect("poisoned").calls.clone()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.state.lock().expect("poisoned").tokens.clone()
    }

    /// A web-identity token file as kubelet projects one for IRSA (moto
    /// checks only that it is there).
    pub fn web_identity_token_file(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("aws-token");
        let claims = STANDARD.encode(
            br#"{"iss":"https://oidc.eks.example","sub":"system:serviceaccount:pullbroker-system:pullbroker","aud":["sts.amazonaws.com"]}"#,
        );
        std::fs::write(&path, format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln")).expect("token file");
        path
    }
}

async fn relay(
    state: Arc<Mutex<RelayState>>,
    upstream: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_string());
    let action = target.clone().or_else(|| {
        String::from_utf8_lossy(&body)
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action=").map(String::from))
    });
    let is_ecr_token = target.as_deref() == Some("GetAuthorizationToken");
    let (expires_in, deny) = {
        let mut st = state.lock().expect("poisoned");
        st.calls.push(action.unwrap_or_else(|| "?".into()));
        (st.expires_in, st.deny_ecr)
    };
    if is_ecr_token && deny {
        return (
            StatusCode::BAD_REQUEST,
            [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", "AccessDeniedException"),
            ],
            r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/pull/pullbroker is not authorized to perform: ecr:GetAuthorizationToken"}"#,
        )
            .into_response();
    }
    let (status, resp_headers, mut resp_body) =
        match forward(upstream, &method, &uri, &headers, &body).await {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_GATEWAY, e).into_response(),
        };
    if is_ecr_token && status == 200 {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&resp_body) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs() as i64;
            let mut st = state.lock().expect("poisoned");
            for d in v["authorizationData"].as_array_mut().into_iter().flatten() {
                if let Some(secs) = expires_in {
                    d["expiresAt"] = serde_json::json!(now + secs);
                }
                let decoded = d["authorizationToken"]
                    .as_str()
                    .and_then(|t| STANDARD.decode(t).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if let Some((_, pw)) = decoded.split_once(':') {
                    st.tokens.push(pw.to_string());
                }
            }
            resp_body = serde_json::to_vec(&v).expect("json");
        }
    }
    let mut out = Response::builder().status(status);
    for (k, v) in &resp_headers {
        let k = k.to_ascii_lowercase();
        if !["content-length", "transfer-encoding", "connection"].contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    out.body(axum::body::Body::from(resp_body))
        .expect("response")
}

/// One HTTP/1.1 exchange with moto, `Connection: close`. Written out
/// because the relay needs nothing more and testenv has no HTTP client.
async fn forward(
    upstream: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), String> {
    let mut s = tokio::net::TcpStream::connect(upstream)
        .await
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {upstream}\r\nconnection: close\r\n");
    for (k, v) in headers {
        if ["host", "connection", "content-length", "transfer-encoding"].contains(&k.as_str()) {
            continue;
        }
        req.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .map_err(|_| "moto did not answer in 20 s".to_string())?
        .map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("moto's answer has no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("moto's status line is unreadable")?;
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    if hdrs
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        rest = dechunk(&rest)?;
    }
    Ok((status, hdrs, rest))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("short chunk")?);
        b = b.get(size + 2..).ok_or("short chunk")?;
    }
}
