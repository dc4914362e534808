//! Test helpers for layer tests: targets, routed requests and an inner service that records whether,
//! and with what, it was called.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use crate::body::Body;
use crate::config::{ServiceConfig, Upstream};
use crate::error::ProxyError;
use crate::forward::Egress;
use crate::metrics::Metrics;
use crate::policy::allowlist::Allowlist;
use crate::target::{RoutedRequest, Target};

pub type Inner = BoxCloneService<RoutedRequest<Body>, Response<Body>, ProxyError>;

/// A regional service in kr-west1, env e.
pub fn service(name: &str) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        upstream: Upstream::parse(&format!("https://{name}.kr-west1.e.samsungsdscloud.com"))
            .expect("test upstream"),
        api_version: "1.3".into(),
        region: Some("kr-west1".into()),
        timeout: Duration::from_secs(2),
        body_idle_timeout: Duration::from_secs(30),
        max_idle_connections: 32,
        ca_file: None,
        allow: None,
        allow_unsupported_version: false,
        retry: Default::default(),
        operation_versions: Vec::new(),
        intercept: Vec::new(),
        max_concurrent_requests: None,
    }
}

/// An allowlist of `rules`, as a configuration's `allow` would give it.
pub fn allow(rules: &[&str]) -> Allowlist {
    Allowlist::parse(&rules.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>())
        .expect("test rules")
}

/// The per-service state for `cfg`, its allowlist counted in `metrics`.
pub fn target_for(cfg: ServiceConfig, metrics: &Metrics) -> Arc<Target> {
    Arc::new(Target::new(cfg, metrics, &Egress::direct()).expect("test target"))
}

/// A request as the route layer leaves it: routed to `target`, with the upstream absolute URI.
pub fn routed(target: &Arc<Target>, method: &str, path: &str, body: Body) -> RoutedRequest<Body> {
    let uri = format!("{}{path}", target.config.upstream.base);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("test request");
    RoutedRequest::for_test(target.clone(), req)
}

/// [`routed`] to [`service`]`(svc)`.
pub fn routed_request(svc: &str, method: &str, path: &str, body: Body) -> RoutedRequest<Body> {
    routed_request_for(service(svc), method, path, body)
}

pub fn routed_request_for(
    cfg: ServiceConfig,
    method: &str,
    path: &str,
    body: Body,
) -> RoutedRequest<Body> {
    routed(&target_for(cfg, &Metrics::new()), method, path, body)
}

/// What the inner service received.
#[derive(Clone, Default)]
pub struct Seen {
    pub calls: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<(http::request::Parts, Bytes)>>>,
}

/// An inner service (`tower::service_fn`) that records each request and answers 200.
pub fn recording_inner(seen: Seen) -> Inner {
    BoxCloneService::new(tower::service_fn(move |req: RoutedRequest<Body>| {
        let seen = seen.clone();
        async move {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_request().into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            seen.requests.lock().expect("lock").push((parts, bytes));
            Ok::<_, ProxyError>(Response::new(crate::body::empty()))
        }
    }))
}

/// Runs `req` through `layer` over a recording inner service.
pub async fn call_recorded<L>(
    layer: L,
    req: RoutedRequest<Body>,
) -> (Result<Response<Body>, ProxyError>, Seen)
where
    L: Layer<Inner>,
    L::Service: Service<RoutedRequest<Body>, Response = Response<Body>, Error = ProxyError>,
{
    let seen = Seen::default();
    let svc = layer.layer(recording_inner(seen.clone()));
    let res = svc.oneshot(req).await;
    (res, seen)
}

/// Like [`call_recorded`], returning only the call counter.
pub async fn call_counted<L>(
    layer: L,
    req: RoutedRequest<Body>,
) -> (Result<Response<Body>, ProxyError>, Arc<AtomicUsize>)
where
    L: Layer<Inner>,
    L::Service: Service<RoutedRequest<Body>, Response = Response<Body>, Error = ProxyError>,
{
    let (res, seen) = call_recorded(layer, req).await;
    (res, seen.calls)
}
