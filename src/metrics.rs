//! Prometheus metrics, all named `scp_auth_proxy_*` (listed in the README).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Service names are interned at start (see `target::Target::label`), so counting a request
    /// allocates nothing.
    pub service: &'static str,
    pub method: &'static str,
    pub status_class: &'static str,
    /// Which data-plane listener the request came in on: `plain` or `forward`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabel {
    pub service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

/// A version pin: `{service}` for a service's own pin, `{service, operation}` for an
/// operation pin (`operation` is its `METHOD /path` rule).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PinLabel {
    pub service: String,
    pub operation: Option<String>,
}

impl prometheus_client::encoding::EncodeLabelSet for PinLabel {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        ("service", self.service.as_str()).encode(encoder.encode_label())?;
        if let Some(op) = &self.operation {
            ("operation", op.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub service: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub service: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// Every metric the proxy exports. One `Arc` inside, so the per-request clone the trace layer
/// keeps costs a single reference count.
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// The metrics themselves; reached through [`Metrics`].
pub struct MetricSet {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_latency: Family<LatencyLabel, Histogram>,
    pub rejections: Family<CodeLabel, Counter>,
    pub in_flight: Gauge,
    pub credential_reloads: Family<ResultLabel, Counter>,
    /// Reloads of the whole configuration (and key pair), by result.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Unix seconds when the key pair in use was loaded; key age = now - this.
    pub key_loaded_unix: Gauge<f64, AtomicU64>,
    /// Age of the key pair in use, refreshed at every scrape.
    pub key_age_seconds: Gauge<f64, AtomicU64>,
    /// Days until the pinned version's last supported day (negative: past it).
    pub version_days_left: Family<PinLabel, Gauge>,
    /// Requests by allowlist rule that matched (or "none" for refused).
    pub allowlist: Family<RuleLabel, Counter>,
    /// Local clock minus the upstream's `Date` at the last upstream answer that had one.
    pub clock_skew_seconds: Gauge<f64, AtomicU64>,
    /// Retry decisions after a retryable failure, by outcome.
    pub retries: Family<RetryLabels, Counter>,
    /// Spans for the OTLP exporter, by result (exported, failed, dropped).
    pub spans: Family<ResultLabel, Counter>,
    /// Forward-proxy requests refused before the request path, by reason.
    pub connect_refusals: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A method as a label without allocating: the standard ones by name, anything else "other".
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("scp_auth_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Requests answered, by service, method, status class and listener",
            requests.clone(),
        );
        let upstream_latency = Family::<LatencyLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        r.register(
            "upstream_latency_seconds",
            "Time until the upstream's response headers arrived",
            upstream_latency.clone(),
        );
        let rejections = Family::<CodeLabel, Counter>::default();
        r.register(
            "rejections",
            "Responses the proxy made itself, by error code",
            rejections.clone(),
        );
        let in_flight = Gauge::default();
        r.register(
            "in_flight_requests",
            "Requests being handled now",
            in_flight.clone(),
        );
        let credential_reloads = Family::<ResultLabel, Counter>::default();
        r.register(
            "credential_reloads",
            "Key pair reloads, by result (ok, failed)",
            credential_reloads.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        r.register(
            "config_reloads",
            "Reloads of the configuration and key pair (SIGHUP, --watch-config, key files), by result (ok, failed: the running configuration stayed)",
            config_reloads.clone(),
        );
        let key_loaded_unix = Gauge::<f64, AtomicU64>::default();
        r.register(
            "key_loaded_timestamp_seconds",
            "Unix time the key pair in use was loaded (key age = time() - this)",
            key_loaded_unix.clone(),
        );
        let key_age_seconds = Gauge::<f64, AtomicU64>::default();
        r.register(
            "key_age_seconds",
            "Seconds since the key pair in use was loaded",
            key_age_seconds.clone(),
        );
        let version_days_left = Family::<PinLabel, Gauge>::default();
        r.register(
            "api_version_days_left",
            "Days until the pinned API version's last supported day; negative once past it",
            version_days_left.clone(),
        );
        let allowlist = Family::<RuleLabel, Counter>::default();
        r.register(
            "allowlist_decisions",
            "Requests by the allowlist rule that matched (\"none\": refused)",
            allowlist.clone(),
        );
        let clock_skew_seconds = Gauge::<f64, AtomicU64>::default();
        r.register(
            "clock_skew_seconds",
            "Local clock minus the upstream's Date header at the last upstream answer (1s resolution)",
            clock_skew_seconds.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        r.register(
            "retries",
            "Retryable upstream failures by outcome: retried, recovered (answered after a retry), exhausted (max_attempts), budget, deadline",
            retries.clone(),
        );
        let spans = Family::<ResultLabel, Counter>::default();
        r.register(
            "spans",
            "Spans for the OTLP exporter, by result: exported, failed (the collector refused or was unreachable), dropped (queue full)",
            spans.clone(),
        );
        let connect_refusals = Family::<ReasonLabel, Counter>::default();
        r.register(
            "connect_refusals",
            "Forward-proxy CONNECT and absolute-form requests refused, by reason",
            connect_refusals.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information", build);
        Self(Arc::new(MetricSet {
            registry: r,
            requests,
            upstream_latency,
            rejections,
            in_flight,
            credential_reloads,
            config_reloads,
            key_loaded_unix,
            key_age_seconds,
            version_days_left,
            allowlist,
            clock_skew_seconds,
            retries,
            spans,
            connect_refusals,
        }))
    }

    pub fn set_key_loaded(&self, at: std::time::SystemTime) {
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.key_loaded_unix.set(secs);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
