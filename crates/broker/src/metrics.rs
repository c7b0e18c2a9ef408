//! Prometheus metrics. Labels carry classes and outcomes only — never
//! subjects' tokens, credentials or anything secret.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub purpose: String,
    pub outcome: &'static str,
}

/// A grant's use. Grant names are the operator's, as many as there are
/// grants: no subject, no token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabels {
    pub grant: String,
    pub purpose: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route (`/v1/exchange`), never the raw path.
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    /// `host[:port]`; `other` past [`MAX_REGISTRY_LABELS`] distinct ones.
    pub registry: String,
}

/// Distinct registries counted by name: the broker only contacts
/// registries a credential names, but a `*.` pattern could name many.
pub const MAX_REGISTRY_LABELS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `pinned`, `skipped` or `failed`.
    pub outcome: &'static str,
    /// Why it failed (`rate_limited`, `timeout`, …); empty otherwise.
    pub class: &'static str,
}

/// Latency buckets from a cached exchange (~1 ms) to the API server's
/// longest webhook timeout (30 s), with the default 10 s in between.
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub token_verifications: Family<TokenLabels, Counter>,
    pub config_generation: Gauge,
    pub config_reload_errors: Counter,
    /// Seconds the cluster policy has been served without a working watch (0: current).
    pub policy_stale_seconds: Gauge,
    /// Issuer keys loaded (0: no token can verify).
    pub issuer_keys: Gauge,
    /// Seconds since the issuer's keys were last fetched (-1: never; static keys: 0).
    pub issuer_keys_age_seconds: Gauge,
    /// API requests being served now (within `limits.maxConcurrentRequests`).
    pub in_flight_requests: Gauge,
    /// API requests answered 503 by the limits, by reason (`overloaded`, `timeout`).
    pub limited_requests: Family<LimitLabels, Counter>,
    /// Allows per grant and purpose, and when the last one was.
    pub grant_allows: Family<GrantLabels, Counter>,
    pub grant_last_allowed: Family<GrantLabels, Gauge>,
    /// When this process started counting (the window of the above).
    pub started: Gauge,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub admission_images: Family<AdmissionLabels, Counter>,
    pub ready: Gauge,
    pub registry_rate_limited: Family<RegistryLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pullbroker");
        let m = Metrics {
            requests: Family::default(),
            decisions: Family::default(),
            token_verifications: Family::default(),
            config_generation: Gauge::default(),
            config_reload_errors: Counter::default(),
            policy_stale_seconds: Gauge::default(),
            issuer_keys: Gauge::default(),
            issuer_keys_age_seconds: Gauge::default(),
            in_flight_requests: Gauge::default(),
            limited_requests: Family::default(),
            grant_allows: Family::default(),
            grant_last_allowed: Family::default(),
            started: Gauge::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            admission_images: Family::default(),
            ready: Gauge::default(),
            registry_rate_limited: Family::default(),
            registry: Registry::default(),
        };
        m.started
            .set(pullbroker_core::time::UnixTime::from_system(std::time::SystemTime::now()).0);
        // Series the alerts rate() over exist from the start at 0, so a
        // first refusal or failure is an increase, not a new series.
        for reason in ["overloaded", "timeout"] {
            let _ = m.limited_requests.get_or_create(&LimitLabels { reason });
        }
        for outcome in ["pinned", "skipped"] {
            let _ = m
                .admission_images
                .get_or_create(&AdmissionLabels { outcome, class: "" });
        }
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            m.requests.clone(),
        );
        registry.register(
            "decisions",
            "Policy decisions by purpose and outcome",
            m.decisions.clone(),
        );
        registry.register(
            "token_verifications",
            "Service-account token verifications by result",
            m.token_verifications.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the configuration in use",
            m.config_generation.clone(),
        );
        registry.register(
            "config_reload_errors",
            "Configuration reloads rejected",
            m.config_reload_errors.clone(),
        );
        registry.register(
            "policy_stale_seconds",
            "Seconds the cluster policy has been served from cache while its watches fail (0: current)",
            m.policy_stale_seconds.clone(),
        );
        registry.register(
            "issuer_keys",
            "Service-account issuer keys loaded",
            m.issuer_keys.clone(),
        );
        registry.register(
            "issuer_keys_age_seconds",
            "Seconds since the issuer keys were last fetched (-1: never)",
            m.issuer_keys_age_seconds.clone(),
        );
        registry.register(
            "in_flight_requests",
            "API requests being served now",
            m.in_flight_requests.clone(),
        );
        registry.register(
            "limited_requests",
            "API requests answered 503 by the broker's limits, by reason",
            m.limited_requests.clone(),
        );
        registry.register(
            "grant_allows",
            "Requests each PullGrant allowed, by purpose (since started_timestamp_seconds)",
            m.grant_allows.clone(),
        );
        registry.register(
            "grant_last_allowed_timestamp_seconds",
            "When each PullGrant last allowed a request, by purpose",
            m.grant_last_allowed.clone(),
        );
        registry.register(
            "started_timestamp_seconds",
            "When this broker started counting grant use",
            m.started.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer each request, by matched route (refusals by the limits included)",
            m.request_duration.clone(),
        );
        registry.register(
            "admission_images",
            "Images admission reviewed, by outcome and failure class",
            m.admission_images.clone(),
        );
        registry.register(
            "registry_rate_limited",
            "429 Too Many Requests answers, by registry",
            m.registry_rate_limited.clone(),
        );
        registry.register(
            "ready",
            "Whether /readyz answers ready (1) or not (0), as of this scrape",
            m.ready.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The registry client's hook: counts each 429 under its registry.
    pub fn on_rate_limited(&self) -> pullbroker_registry::OnRateLimited {
        let family = self.registry_rate_limited.clone();
        let seen = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
        pullbroker_registry::OnRateLimited(std::sync::Arc::new(move |registry: &str| {
            let label = {
                let mut seen = seen.lock().expect("poisoned");
                if seen.contains(registry) || seen.len() < MAX_REGISTRY_LABELS {
                    seen.insert(registry.to_string());
                    registry.to_string()
                } else {
                    "other".to_string()
                }
            };
            family
                .get_or_create(&RegistryLabels { registry: label })
                .inc();
        }))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
