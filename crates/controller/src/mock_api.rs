//! A scripted Kubernetes API for unit tests, in kube-rs controller-rs's
//! style: each expected request (method and path) in order, with the answer
//! to give. The real `kube::Client` talks to it, so what is tested is the
//! requests the code really makes. A request out of turn is answered 500 and
//! recorded; [`Scripted::done`] fails the test on it, or on a step never asked.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use kube::client::Body;
use serde_json::Value;

/// One expected request and its answer.
pub struct Step {
    pub method: &'static str,
    /// The path, without the query.
    pub path: String,
    pub status: u16,
    pub body: Value,
    /// Answer with the request's own body at this resourceVersion, as the
    /// API server does for a write (the seal over it must survive).
    pub echo: Option<String>,
}

pub fn step(method: &'static str, path: &str, status: u16, body: Value) -> Step {
    Step {
        method,
        path: path.to_string(),
        status,
        body,
        echo: None,
    }
}

/// A write answered 200 with what was written, at `resource_version`.
pub fn echo(method: &'static str, path: &str, resource_version: &str) -> Step {
    Step {
        echo: Some(resource_version.to_string()),
        ..step(method, path, 200, Value::Null)
    }
}

/// A Kubernetes `Status` answer, as the API server sends with errors.
pub fn status(code: u16, reason: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code})
}

#[derive(Default)]
struct State {
    steps: VecDeque<Step>,
    /// The JSON body of every request that matched its step, in order.
    sent: Vec<Value>,
    unexpected: Vec<String>,
}

pub struct Scripted(Arc<Mutex<State>>);

impl Scripted {
    /// A client whose requests must follow `steps`.
    pub fn client(steps: Vec<Step>) -> (kube::Client, Scripted) {
        let state = Arc::new(Mutex::new(State {
            steps: steps.into(),
            ..Default::default()
        }));
        let shared = state.clone();
        let service = tower::service_fn(move |req: http::Request<Body>| {
            let state = shared.clone();
            async move {
                let (method, path) = (req.method().to_string(), req.uri().path().to_string());
                let body = req.into_body().collect_bytes().await?;
                let mut s = state.lock().expect("poisoned");
                let answer = match s.steps.front() {
                    Some(next) if next.method == method && next.path == path => {
                        let next = s.steps.pop_front().expect("checked");
                        let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        s.sent.push(sent.clone());
                        match next.echo {
                            Some(rv) => {
                                let mut written = sent;
                                written["metadata"]["resourceVersion"] = Value::String(rv);
                                (next.status, written)
                            }
                            None => (next.status, next.body),
                        }
                    }
                    next => {
                        let expected = next.map_or("nothing".to_string(), |n| {
                            format!("{} {}", n.method, n.path)
                        });
                        s.unexpected
                            .push(format!("{method} {path} (expected {expected})"));
                        (500, status(500, "unexpected request"))
                    }
                };
                Ok::<_, kube::Error>(
                    http::Response::builder()
                        .status(answer.0)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer.1).expect("json")))
                        .expect("a valid response"),
                )
            }
        });
        (kube::Client::new(service, "default"), Scripted(state))
    }

    /// The bodies sent so far (JSON, `null` for none), in order.
    pub fn sent(&self) -> Vec<Value> {
        self.0.lock().expect("poisoned").sent.clone()
    }

    /// Fails unless every step was asked for, in order, and nothing else.
    pub fn done(self) {
        let s = self.0.lock().expect("poisoned");
        assert!(
            s.unexpected.is_empty(),
            "unexpected requests: {:?}",
            s.unexpected
        );
        let left: Vec<String> = s
            .steps
            .iter()
            .map(|n| format!("{} {}", n.method, n.path))
            .collect();
        assert!(left.is_empty(), "expected requests never made: {left:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;

    #[tokio::test]
    #[should_panic(expected = "unexpected requests")]
    async fn a_request_out_of_turn_fails_the_test() {
        let (client, api) = Scripted::client(vec![]);
        let _ = Api::<ConfigMap>::namespaced(client, "x").get_opt("y").await;
        api.done();
    }

    #[tokio::test]
    #[should_panic(expected = "never made")]
    async fn a_step_never_asked_for_fails_the_test() {
        let (_client, api) = Scripted::client(vec![step("GET", "/api/v1/x", 200, Value::Null)]);
        api.done();
    }
}
