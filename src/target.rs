//! Per-service state, built once at start: everything a layer below routing needs about the
//! service a request was routed to, in one place.
//!
//! Guarantees: each [`Target`] is complete when the proxy starts (its upstream client, its
//! allowlist with its counters, its version pin, its image-import policy); nothing is looked
//! up by position or name on the request path, so a layer cannot see another service's state
//! or none at all. A bad service (an invalid header value, a CA file, an egress proxy
//! setting) fails the start and names the service; its allowlist was parsed at load.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;

use crate::config::{Config, ServiceConfig, Upstream};
use crate::forward::{client_for, Egress, Endpoint, HttpClient, TlsSetupError};
use crate::metrics::{Metrics, RuleLabel};
use crate::policy::allowlist::Allowlist;
use crate::route::{self, Destination, Routed, Routes};

pub mod retry;

pub use retry::RetryPolicy;

/// A request routed to a [`Target`]: the only input of the layers below routing.
pub type RoutedRequest<B> = Routed<Target, B>;

/// One upstream service as the request path needs it.
pub struct Target {
    /// The service name with a `'static` lifetime, for metric labels (interned once).
    pub label: &'static str,
    pub config: ServiceConfig,
    /// `Host` header value: the upstream authority exactly as configured.
    pub host: HeaderValue,
    /// `Scp-Api-Version` value: `<service> <api_version>`.
    pub version_header: HeaderValue,
    /// `<service> <version>` for each of `config.operation_versions`, in the same order.
    pub operation_version_headers: Vec<HeaderValue>,
    /// `services.NAME.allow`, parsed, with its decision counters; `None`: everything passes.
    pub allowlist: Option<AllowlistState>,
    /// Set on SCP's virtualserver, whose image import bodies are checked.
    pub image_import: Option<ImagePolicy>,
    /// Set on SCP's IAM, which serves the endpoint catalog (`GET /v1/endpoints`).
    pub serves_endpoint_catalog: bool,
    /// The pooled upstream client, connecting directly or through the egress proxy.
    pub client: HttpClient,
    /// `services.NAME.retry`, with the service's retry budget.
    pub retry: RetryPolicy,
    /// `services.NAME.max_concurrent_requests`: this service's share of requests in flight.
    pub(crate) share: Option<ServiceShare>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.label)
            .field("upstream", &self.config.upstream.base)
            .finish_non_exhaustive()
    }
}

/// A service's allowlist with its decision counters, created at start so counting a request
/// allocates nothing.
#[derive(Debug)]
pub struct AllowlistState {
    pub list: Allowlist,
    /// One per rule, in rule order.
    pub allowed: Vec<Counter>,
    pub refused: Counter,
}

/// One service's share of in-flight requests (`services.NAME.max_concurrent_requests`), kept
/// in its [`Target`]; the service limit layer (`layers::limit`) takes its permits.
#[derive(Debug)]
pub(crate) struct ServiceShare {
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) limit: usize,
}

impl ServiceShare {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

/// What an image import URL must match on this service.
#[derive(Debug)]
pub struct ImagePolicy {
    pub region: Option<String>,
    pub env: Option<String>,
}

/// A service that cannot be served as configured.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid service configuration: services.{service}.{key}: {message}")]
    Invalid {
        service: String,
        key: &'static str,
        message: String,
    },
    #[error("invalid service configuration: {0}")]
    Routing(String),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Whether a service is SCP's IAM, which serves the endpoint catalog: named `iam`, or its
/// upstream host's first label is `iam`.
pub fn serves_endpoint_catalog(svc: &ServiceConfig) -> bool {
    svc.name == "iam"
        || svc
            .upstream
            .authority
            .host()
            .split('.')
            .next()
            .is_some_and(|l| l.eq_ignore_ascii_case("iam"))
}

/// Whether a service is SCP's virtualserver: named `virtualserver` (the name the
/// `Scp-Api-Version` header must carry for virtualserver anyway), or its upstream host's first
/// label is `virtualserver`.
pub fn is_image_service(svc: &ServiceConfig) -> bool {
    svc.name == "virtualserver"
        || svc
            .upstream
            .authority
            .host()
            .split('.')
            .next()
            .is_some_and(|l| l.eq_ignore_ascii_case("virtualserver"))
}

impl Target {
    pub fn new(
        config: ServiceConfig,
        metrics: &Metrics,
        egress: &Egress,
    ) -> Result<Self, TargetError> {
        let invalid = |key: &'static str, message: String| TargetError::Invalid {
            service: config.name.clone(),
            key,
            message,
        };
        let host = HeaderValue::from_str(config.upstream.authority.as_str())
            .map_err(|e| invalid("upstream", e.to_string()))?;
        let version_header =
            HeaderValue::from_str(&format!("{} {}", config.name, config.api_version))
                .map_err(|e| invalid("api_version", e.to_string()))?;
        let operation_version_headers = config
            .operation_versions
            .iter()
            .map(|o| HeaderValue::from_str(&format!("{} {}", config.name, o.version)))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("operation_versions", e.to_string()))?;
        let allowlist = match &config.allow {
            None => None,
            Some(list) => {
                let list = list.clone();
                let counter = |rule: &str| {
                    metrics
                        .allowlist
                        .get_or_create(&RuleLabel {
                            service: config.name.clone(),
                            rule: rule.to_owned(),
                        })
                        .clone()
                };
                let allowed = list.rules.iter().map(|r| counter(&r.text)).collect();
                let refused = counter("none");
                Some(AllowlistState {
                    list,
                    allowed,
                    refused,
                })
            }
        };
        let image_import = is_image_service(&config).then(|| ImagePolicy {
            region: config.region.clone(),
            env: config.env(),
        });
        let serves_endpoint_catalog = serves_endpoint_catalog(&config);
        let client = client_for(&config, egress)?;
        let retry = RetryPolicy::new(&config.retry);
        Ok(Self {
            label: route::intern(&config.name),
            host,
            version_header,
            operation_version_headers,
            allowlist,
            image_import,
            serves_endpoint_catalog,
            client,
            retry,
            share: config.max_concurrent_requests.map(ServiceShare::new),
            config,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }
}

impl Destination for Target {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn label(&self) -> &'static str {
        self.label
    }
    fn upstream(&self) -> &Upstream {
        &self.config.upstream
    }
}

impl Endpoint for Target {
    fn client(&self) -> &HttpClient {
        &self.client
    }
    fn service(&self) -> &ServiceConfig {
        &self.config
    }
}

/// The routing table over every configured service, each connecting as `egress` says.
pub fn routes(
    config: &Config,
    metrics: &Metrics,
    egress: &Egress,
) -> Result<Routes<Target>, TargetError> {
    let targets = config
        .services
        .iter()
        .map(|s| Target::new(s.clone(), metrics, egress).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    Routes::new(targets, config.routing.default_service.as_deref()).map_err(TargetError::Routing)
}
