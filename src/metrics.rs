//! Prometheus metrics, all named `scp_auth_proxy_*` (listed in the README).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

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
    /// Each service's request counters and latency histogram, taken from the two families
    /// above on first use ([`MetricSet::count_request`]).
    served: RwLock<Vec<(&'static str, Arc<ServiceSeries>)>>,
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

/// The listeners, methods and status classes a request is counted by, in the order of
/// [`ServiceSeries::requests`].
const LISTENERS: [&str; 2] = ["plain", "forward"];
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const REQUEST_SERIES: usize = LISTENERS.len() * METHODS.len() * STATUS_CLASSES.len();

/// One service's series, each taken from its family the first time it is counted and kept:
/// counting a request then hashes no labels and takes no family lock (the two
/// `get_or_create` calls it replaces were about 1.3k instructions of a proxied GET). A series
/// appears in the exposition once first counted, as with `get_or_create`.
struct ServiceSeries {
    latency: OnceLock<Histogram>,
    requests: [OnceLock<Counter>; REQUEST_SERIES],
}

impl MetricSet {
    /// Counts one answered request, and the upstream's latency when there was one.
    pub(crate) fn count_request(
        &self,
        service: &'static str,
        method: &http::Method,
        status: u16,
        listener: &'static str,
        upstream_latency: Option<std::time::Duration>,
    ) {
        let method = method_label(method);
        let status_class = status_class(status);
        let at = LISTENERS.iter().position(|l| *l == listener).map(|l| {
            let m = METHODS
                .iter()
                .position(|x| *x == method)
                .unwrap_or(METHODS.len() - 1);
            let c = STATUS_CLASSES
                .iter()
                .position(|x| *x == status_class)
                .unwrap_or(STATUS_CLASSES.len() - 1);
            (l * METHODS.len() + m) * STATUS_CLASSES.len() + c
        });
        let labels = || RequestLabels {
            service,
            method,
            status_class,
            listener,
        };
        self.with_series(service, |series| {
            if let Some(lat) = upstream_latency {
                series
                    .latency
                    .get_or_init(|| {
                        self.upstream_latency
                            .get_or_create(&LatencyLabel { service })
                            .clone()
                    })
                    .observe(lat.as_secs_f64());
            }
            match at {
                Some(at) => series.requests[at]
                    .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                    .inc(),
                // A listener this table does not know: through the family.
                None => self.requests.get_or_create(&labels()).inc(),
            };
        });
    }

    fn with_series<T>(&self, service: &'static str, f: impl FnOnce(&ServiceSeries) -> T) -> T {
        {
            let served = self.served.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, s)) = served.iter().find(|(name, _)| *name == service) {
                return f(s);
            }
        }
        let series = {
            let mut served = self.served.write().unwrap_or_else(PoisonError::into_inner);
            match served.iter().find(|(name, _)| *name == service) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = Arc::new(ServiceSeries {
                        latency: OnceLock::new(),
                        requests: std::array::from_fn(|_| OnceLock::new()),
                    });
                    served.push((service, s.clone()));
                    s
                }
            }
        };
        f(&series)
    }
}

/// A status code's class label; anything outside 100-599 counts as `5xx`.
pub(crate) fn status_class(s: u16) -> &'static str {
    match s {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
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
            served: RwLock::default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    /// The kept series are the families' own: the exposition counts each request once, under
    /// the labels `get_or_create` would have given it, for every listener, method and class.
    #[test]
    fn count_request_counts_under_the_family_labels() {
        let m = Metrics::new();
        let get = http::Method::GET;
        for _ in 0..3 {
            m.count_request(
                "virtualserver",
                &get,
                200,
                "plain",
                Some(Duration::from_millis(3)),
            );
        }
        m.count_request("virtualserver", &http::Method::POST, 503, "forward", None);
        m.count_request(
            "-",
            &http::Method::from_bytes(b"PURGE").unwrap(),
            404,
            "plain",
            None,
        );
        m.count_request("iam", &http::Method::DELETE, 999, "plain", None);
        // A listener outside the table goes through the family and is counted all the same.
        m.count_request("iam", &get, 204, "unix", Some(Duration::from_millis(1)));
        m.count_request("iam", &get, 204, "unix", None);
        let text = m.encode();
        let count = |labels: &str| {
            line(
                &text,
                &format!("scp_auth_proxy_requests_total{{{labels}}} "),
            )
            .unwrap_or_else(|| panic!("no series {labels} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
        };
        assert_eq!(
            count(r#"service="virtualserver",method="GET",status_class="2xx",listener="plain""#),
            "3"
        );
        assert_eq!(
            count(r#"service="virtualserver",method="POST",status_class="5xx",listener="forward""#),
            "1"
        );
        assert_eq!(
            count(r#"service="-",method="other",status_class="4xx",listener="plain""#),
            "1"
        );
        assert_eq!(
            count(r#"service="iam",method="DELETE",status_class="5xx",listener="plain""#),
            "1"
        );
        assert_eq!(
            count(r#"service="iam",method="GET",status_class="2xx",listener="unix""#),
            "2"
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("scp_auth_proxy_requests_total{"))
                .count(),
            5,
            "{text}"
        );
        let latency_count = |service: &str| {
            line(
                &text,
                &format!("scp_auth_proxy_upstream_latency_seconds_count{{service=\"{service}\"}} "),
            )
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        assert_eq!(latency_count("virtualserver").as_deref(), Some("3"));
        assert_eq!(latency_count("iam").as_deref(), Some("1"));
        assert_eq!(latency_count("-"), None);
    }
}
