//! The request path, composed in one place. Read [`layers`] top to bottom: the order a request
//! meets the layers.
//!
//! Guarantees, each held by the order below and tested in-process here (the `tests` module
//! runs the whole stack with `oneshot` over a recording upstream): a request refused by any
//! layer never reaches the upstream; the allowlist decides before any body is read; header
//! hygiene runs before every policy; the signature covers the exact method, URL and bytes sent;
//! no response the proxy makes holds the secret key. Routing turns a `Request` into a
//! [`RoutedRequest`], and every per-service layer accepts only that, so moving one of them
//! above routing does not compile.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceBuilder};

use crate::body::Body;
use crate::config::{Config, ListenAddr};
use crate::credentials::CredentialStore;
use crate::endpoints::{self, EndpointMap};
use crate::error::{ProxyError, RescueLayer};
use crate::forward::{Egress, Forward};
use crate::layers::allowlist::OperationAllowlistLayer;
use crate::layers::audit::{AuditLayer, Sink};
use crate::layers::endpoint_catalog::EndpointCatalogLayer;
use crate::layers::explain::ExplainLayer;
use crate::layers::hygiene::HeaderHygieneLayer;
use crate::layers::image_import::ImageImportLayer;
use crate::layers::limit::{ConcurrencyLimitLayer, ServiceLimitLayer};
use crate::layers::require_header::RequireHeaderLayer;
use crate::layers::retry::RetryLayer;
use crate::layers::sign::SignLayer;
use crate::layers::trace::TraceLayer;
use crate::layers::tracecontext::{SpanExport, TraceContextLayer};
use crate::layers::version::VersionPinLayer;
use crate::layers::ReqBody;
use crate::metrics::Metrics;
use crate::ready::{ready_call, ReadyCall};
use crate::route::{RouteLayer, Routes};
use crate::target::{self, RoutedRequest, Target, TargetError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the data plane needs, built once at start.
#[derive(Clone, Debug)]
pub struct ProxyParts {
    /// Every service with its per-service state (client, allowlist, pin, import policy).
    pub routes: Routes<Target>,
    pub credentials: CredentialStore,
    pub metrics: Metrics,
    pub max_concurrent_requests: usize,
    /// `server.max_inspected_body_bytes`: the most an image import body may be.
    pub max_inspected_body_bytes: usize,
    /// Where audit records go (`[audit] file`, else the log).
    pub(crate) audit: Sink,
    /// The OTLP span exporter (`[telemetry] otlp_endpoint`), started by `start`.
    pub(crate) telemetry: Option<crate::telemetry::Exporter>,
    /// `server.require_header`: requests without it are refused (412).
    pub(crate) require_header: Option<http::HeaderName>,
    /// Every service's upstream and its URL on the proxy, for the endpoint catalog rewrite;
    /// `None` when `routing.rewrite_endpoint_catalog = false`. [`ProxyParts::set_listen`]
    /// gives it the bound address.
    pub(crate) endpoint_catalog: Option<Arc<EndpointMap>>,
}

impl ProxyParts {
    /// Builds every service's state from `config`; a service that cannot be served fails here.
    pub fn new(
        config: &Config,
        credentials: CredentialStore,
        metrics: Metrics,
        egress: &Egress,
    ) -> Result<Self, TargetError> {
        Ok(Self {
            routes: target::routes(config, &metrics, egress)?,
            credentials,
            metrics,
            max_concurrent_requests: config.server.max_concurrent_requests,
            max_inspected_body_bytes: config.server.max_inspected_body_bytes,
            // The file, when configured, is opened by `start` (an I/O error is not a service's).
            audit: Sink::Log,
            telemetry: None,
            require_header: match &config.server.require_header {
                None => None,
                Some(h) => Some(http::HeaderName::from_bytes(h.as_bytes()).map_err(|e| {
                    TargetError::Routing(format!("server.require_header {h:?}: {e}"))
                })?),
            },
            endpoint_catalog: config.routing.rewrite_endpoint_catalog.then(|| {
                let services = config
                    .services
                    .iter()
                    .map(|s| (s.name.as_str(), &s.upstream, &s.intercept[..]));
                let base = endpoints::proxy_base(&config.server.listen);
                Arc::new(EndpointMap::new(services, base))
            }),
        })
    }

    /// Points the endpoint catalog rewrite at where the data plane is bound (the configured
    /// port may be 0); on a Unix socket, which no URL can name, plain-listener catalogs pass
    /// as they are.
    pub fn set_listen(&mut self, listen: &ListenAddr) {
        self.endpoint_catalog = self
            .endpoint_catalog
            .as_ref()
            .map(|map| Arc::new(map.with_base(endpoints::proxy_base(listen))));
    }
}

/// The whole stack above the innermost service `S` (the upstream), for request bodies `B`.
/// Public for `benches/stack.rs`, which runs it over an in-process upstream.
pub fn layers<S, B>(
    parts: &ProxyParts,
) -> impl Layer<
    S,
    Service = impl Service<
        Request<B>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
                  + Send
                  + 'static,
>
where
    S: Service<RoutedRequest<ReqBody<B>>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        // Plain request bodies stream through; layers that inspect a body may swap in bytes.
        .map_request(|req: Request<B>| req.map(Either::Left))
        // Outermost: request id and the one log line and metrics for every answer, the
        // proxy's own rejections included.
        .layer(TraceLayer::new(parts.metrics.clone()))
        // Trace context before anything is logged: the access and audit lines carry its id.
        .layer(TraceContextLayer::new(parts.telemetry.clone().map(
            |exporter| SpanExport {
                exporter,
                routes: parts.routes.clone(),
            },
        )))
        // One audit record per answer, the proxy's own refusals included (so above Rescue).
        .layer(AuditLayer::new(
            parts.routes.clone(),
            parts.credentials.clone(),
            parts.audit.clone(),
        ))
        // Every error below becomes a JSON response here, named by its service when routing
        // had chosen one (the name travels in the error).
        .layer(RescueLayer)
        // Refuse requests without the required header (SSRF guard) before they take a permit
        // or reach routing: a forged fetch costs nothing and learns nothing about services.
        .layer(RequireHeaderLayer::new(parts.require_header.clone()))
        // Refuse excess load before doing any work for it.
        .layer(ConcurrencyLimitLayer::new(parts.max_concurrent_requests))
        // Choose the service and rewrite the URI to the upstream's; CONNECT and absolute-form
        // targets end here, so a client never picks where a signed request goes. Below this
        // line every layer takes a `RoutedRequest`: it cannot move above it.
        .layer(RouteLayer::new(parts.routes.clone()))
        // The service's own share of requests in flight (bulkhead): a hanging upstream fills
        // only its share. Needs the routed service; before any work is done for the request.
        .layer(ServiceLimitLayer)
        // Drop hop-by-hop and client-sent credentials before any policy looks at headers.
        .layer(HeaderHygieneLayer)
        // Inject or enforce the pinned Scp-Api-Version.
        .layer(VersionPinLayer)
        // Refuse operations outside the service's allowlist before any body is read for them.
        .layer(OperationAllowlistLayer)
        // Read and check image-import bodies last, so only allowed requests are buffered and
        // the bytes checked are the bytes signed and sent.
        .layer(ImageImportLayer::new(
            parts.credentials.clone(),
            parts.max_inspected_body_bytes,
        ))
        // Below every policy, so only a catalog request that was allowed and pinned is
        // rewritten, and a refusal is never read as a catalog; above retries, so the one
        // final answer is read once; above signing, so its Accept-Encoding (no signed header)
        // is set before the signature is made for what is sent.
        .layer(EndpointCatalogLayer::new(
            parts.endpoint_catalog.clone(),
            parts.max_inspected_body_bytes,
        ))
        // Below every policy, so it sees only upstream answers (never the proxy's own); above
        // signing, so a hint names what was sent and a retry's answers are explained once.
        .layer(ExplainLayer::new(
            parts.credentials.clone(),
            parts.metrics.clone(),
        ))
        // Wraps signing and forwarding, so every attempt goes out with a fresh timestamp and
        // signature; below every policy, so a retry is never re-checked or re-read.
        .layer(RetryLayer::new(parts.metrics.clone()))
        // Last before forwarding: sign exactly what goes out, with a fresh timestamp.
        .layer(SignLayer::new(parts.credentials.clone()))
}

/// The data-plane service: one per process. hyper-util clones it for every request, so every
/// layer keeps its state behind an `Arc` and the clone is a handful of reference counts.
pub fn proxy_service(parts: &ProxyParts) -> impl crate::server::HttpService {
    layers::<Forward, Incoming>(parts).layer(Forward)
}

/// Builds a new stack from reloaded parts and makes it the one the next request takes.
pub(crate) type Install = Arc<dyn Fn(&ProxyParts) + Send + Sync>;

/// [`proxy_service`] behind a swappable pointer, and the function that swaps in a stack built
/// from new parts (a reload). Each request takes the stack current when it arrives and keeps it
/// to the end, so in-flight requests finish on the configuration they started with.
/// `parts` are the ones bound (see [`ProxyParts::set_listen`]); a reload keeps that address
/// (listeners change on restart only), so reloaded parts are pointed at it too.
pub(crate) fn reloadable_service(
    parts: &ProxyParts,
    listen: &ListenAddr,
) -> (impl crate::server::HttpService, Install) {
    let current = Arc::new(ArcSwap::from_pointee(proxy_service(parts)));
    let target = current.clone();
    let listen = listen.clone();
    let install: Install = Arc::new(move |p: &ProxyParts| {
        let mut p = p.clone();
        p.set_listen(&listen);
        target.store(Arc::new(proxy_service(&p)))
    });
    (Swap { current }, install)
}

/// The service the listener holds: a pointer to the current stack.
#[derive(Clone)]
pub(crate) struct Swap<S> {
    current: Arc<ArcSwap<S>>,
}

impl<S, Req> Service<Req> for Swap<S>
where
    S: Service<Req> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ReadyCall<S, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Readiness is the stack's own, checked per request by `ready_call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let stack = S::clone(&self.current.load());
        ready_call(stack, req)
    }
}

#[cfg(test)]
mod tests {
    //! The ordering guarantees, through the whole stack in-process: `layers(..)` over a
    //! recording `service_fn` upstream, one request at a time with `oneshot`.

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use http::{HeaderMap, HeaderValue, Method, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    use super::*;
    use crate::config::{Overrides, Source};
    use crate::credentials::Credentials;
    use crate::layers::sign::{SCP_ACCESSKEY, SCP_SIGNATURE, SCP_TIMESTAMP};
    use crate::layers::version::SCP_API_VERSION;

    const SECRET: &str = "app-test-secret-must-not-leak";
    const ACCT: &str = "0123456789abcdef0123456789abcdef";
    const VS: &str = "https://virtualserver.kr-west1.e.samsungsdscloud.com";
    const IMPORT: &str = "/v1/images/img-1/import";

    pin_project_lite::pin_project! {
        /// A request body that notes whether anything ever read it.
        struct Watched {
            #[pin]
            inner: Full<Bytes>,
            polled: Arc<AtomicBool>,
        }
    }

    impl http_body::Body for Watched {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            let this = self.project();
            this.polled.store(true, Ordering::SeqCst);
            this.inner.poll_frame(cx)
        }
    }

    /// One request as the upstream received it.
    struct Received {
        method: Method,
        uri: String,
        headers: HeaderMap,
        body: Bytes,
    }

    #[derive(Clone, Default)]
    struct Upstream {
        seen: Arc<Mutex<Vec<Received>>>,
        /// How many of the first requests to answer 503 (a retryable failure).
        busy: Arc<AtomicUsize>,
    }

    impl Upstream {
        /// The innermost service: records each request and answers 200 `upstream ok` (503
        /// `busy` while `busy` lasts).
        fn service(
            &self,
        ) -> impl Service<
            RoutedRequest<ReqBody<Watched>>,
            Response = Response<Body>,
            Error = ProxyError,
            Future = impl Send + 'static,
        > + Clone
               + Send
               + 'static {
            let seen = self.seen.clone();
            let busy = self.busy.clone();
            tower::service_fn(move |routed: RoutedRequest<ReqBody<Watched>>| {
                let seen = seen.clone();
                let busy = busy.clone();
                async move {
                    let (parts, body) = routed.into_request().into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    seen.lock().unwrap().push(Received {
                        method: parts.method,
                        uri: parts.uri.to_string(),
                        headers: parts.headers,
                        body,
                    });
                    if busy
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let mut resp = Response::new(crate::body::full("busy"));
                        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        return Ok(resp);
                    }
                    Ok::<_, ProxyError>(Response::new(crate::body::full("upstream ok")))
                }
            })
        }
        fn calls(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    /// virtualserver (the default, with an allowlist and image import checks) and iam.
    fn parts() -> (ProxyParts, tempfile::TempDir) {
        let toml = format!(
            r#"
[credentials]
access_key = "ak"
account_id = "{ACCT}"
[routing]
default_service = "virtualserver"
[services.virtualserver]
upstream = "{VS}"
api_version = "1.3"
region = "kr-west1"
allow = ["GET /v1/images/**", "POST /v1/images/*/import", "POST /v1/images"]
retry = {{ operations = ["POST /v1/images/*/import"] }}
[services.iam]
upstream = "https://iam.kr-west1.e.samsungsdscloud.com"
api_version = "1.0"
allow_unsupported_version = true
"#
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, toml).unwrap();
        let config = crate::config::load(&Source::File(path), &Overrides::default()).unwrap();
        let creds =
            Credentials::from_parts("ak", SECRET.as_bytes(), ACCT, "Openapi", "test").unwrap();
        let parts = ProxyParts::new(
            &config,
            CredentialStore::new(creds),
            Metrics::new(),
            &Egress::direct(),
        )
        .unwrap();
        (parts, dir)
    }

    fn import_body() -> String {
        format!(
            r#"{{"url": "https://object-store.kr-west1.e.samsungsdscloud.com/{ACCT}:bucket/ubuntu.qcow2"}}"#
        )
    }

    /// A request with a body that records whether it was read.
    fn request(method: &str, target: &str, body: &str) -> (Request<Watched>, Arc<AtomicBool>) {
        let polled = Arc::new(AtomicBool::new(false));
        let body = Watched {
            inner: Full::new(Bytes::from(body.to_owned())),
            polled: polled.clone(),
        };
        let req = Request::builder()
            .method(method)
            .uri(target)
            .body(body)
            .unwrap();
        (req, polled)
    }

    /// Runs `req` through the whole stack over `upstream`.
    async fn send(
        parts: &ProxyParts,
        upstream: &Upstream,
        req: Request<Watched>,
    ) -> (StatusCode, HeaderMap, String) {
        let svc = layers(parts).layer(upstream.service());
        let resp = svc.oneshot(req).await.unwrap();
        let (head, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            head.status,
            head.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn code(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["code"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_rejected_request_never_reaches_the_upstream() {
        let (parts, _dir) = parts();
        let bad_url = r#"{"url": "https://evil.example/x.qcow2"}"#;
        for (method, target, headers, body, want) in [
            ("GET", "/nowhere/x", &[][..], "", None),
            (
                "CONNECT",
                "iam.example:443",
                &[],
                "",
                Some("connect_not_supported"),
            ),
            (
                "GET",
                "http://evil.example/v1/images",
                &[],
                "",
                Some("absolute_form_target"),
            ),
            (
                "GET",
                "/v1/images",
                &[("scp-api-version", "virtualserver 1.2")],
                "",
                Some("api_version_mismatch"),
            ),
            (
                "DELETE",
                "/v1/images/abc",
                &[],
                "",
                Some("operation_not_allowed"),
            ),
            (
                "GET",
                "/v1/images/../servers",
                &[],
                "",
                Some("path_not_canonical"),
            ),
            ("POST", IMPORT, &[], bad_url, Some("url_wrong_host")),
            (
                "POST",
                IMPORT,
                &[("content-encoding", "gzip")],
                "x",
                Some("body_encoded"),
            ),
        ] {
            let upstream = Upstream::default();
            let (mut req, _) = request(method, target, body);
            for (k, v) in headers {
                req.headers_mut().insert(*k, HeaderValue::from_static(v));
            }
            let (status, _, body) = send(&parts, &upstream, req).await;
            // The default service takes unknown prefixes; its allowlist refuses this one.
            let want = want.unwrap_or("operation_not_allowed");
            assert_eq!(code(&body), want, "{method} {target}");
            assert!(status.is_client_error(), "{method} {target}: {status}");
            assert_eq!(
                upstream.calls(),
                0,
                "{method} {target} reached the upstream"
            );
        }
        // The same stack forwards a good request: the upstream count above could be nonzero.
        let upstream = Upstream::default();
        let (status, _, body) = send(&parts, &upstream, request("GET", "/v1/images", "").0).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "upstream ok"));
        assert_eq!(upstream.calls(), 1);
    }

    #[tokio::test]
    async fn the_allowlist_runs_before_any_body_is_read() {
        let (parts, _dir) = parts();
        let upstream = Upstream::default();
        // Refused by the allowlist: a path the image import check reads (it recognises
        // generously) but the rules do not cover.
        let (req, polled) = request("POST", "/v1/images/img-1/import/", &import_body());
        let (status, _, body) = send(&parts, &upstream, req).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (StatusCode::FORBIDDEN, "operation_not_allowed")
        );
        assert!(
            !polled.load(Ordering::SeqCst),
            "a refused request's body was read"
        );
        // Allowed: the import body is read (checked), and forwarded.
        let (req, polled) = request("POST", IMPORT, &import_body());
        let (status, _, _) = send(&parts, &upstream, req).await;
        assert_eq!(status, StatusCode::OK);
        assert!(polled.load(Ordering::SeqCst));
        assert_eq!(upstream.calls(), 1);
    }

    #[tokio::test]
    async fn the_signature_covers_the_bytes_sent() {
        let (parts, _dir) = parts();
        let upstream = Upstream::default();
        for (method, target, body) in [
            ("GET", "/v1/images/a?x=%20&y=1&x=2&", ""),
            ("GET", "/iam/v1/users/a%2Fb;p?q=a+b&q=%2F", ""),
            ("POST", IMPORT, import_body().as_str()),
        ] {
            let (mut req, _) = request(method, target, body);
            // Client-sent credentials must not survive into what is signed or sent.
            req.headers_mut()
                .insert(SCP_SIGNATURE, HeaderValue::from_static("forged"));
            req.headers_mut()
                .insert(SCP_TIMESTAMP, HeaderValue::from_static("1"));
            let (status, _, _) = send(&parts, &upstream, req).await;
            assert_eq!(status, StatusCode::OK, "{method} {target}");
            let seen = upstream.seen.lock().unwrap();
            let got = seen.last().unwrap();
            let h = |n: &http::HeaderName| got.headers[n].to_str().unwrap().to_owned();
            let expected = crate::signer::sign(
                SECRET.as_bytes(),
                got.method.as_str(),
                &got.uri,
                &h(&SCP_TIMESTAMP),
                &h(&SCP_ACCESSKEY),
                ACCT,
                "Openapi",
            );
            assert_eq!(h(&SCP_SIGNATURE), expected.as_str(), "{method} {target}");
            assert_eq!(got.headers.get_all(&SCP_SIGNATURE).iter().count(), 1);
            // The URL signed is the one sent: the raw path and query, prefix stripped.
            let tail = target.strip_prefix("/iam").unwrap_or(target);
            assert!(got.uri.ends_with(tail), "{} vs {target}", got.uri);
            // The body sent is the body checked, byte for byte, with its length.
            assert_eq!(got.body, body.as_bytes());
            if !body.is_empty() {
                assert_eq!(h(&http::header::CONTENT_LENGTH), body.len().to_string());
            }
        }
    }

    #[tokio::test]
    async fn the_secret_never_reaches_a_response() {
        let (parts, _dir) = parts();
        let upstream = Upstream::default();
        // A secret-shaped header and path from the client must not be echoed either.
        for (method, target) in [
            ("GET", "/v1/images"),
            ("DELETE", "/v1/images/x"),
            ("GET", "http://x/"),
            ("POST", IMPORT),
            ("GET", "/v1/images/%2e%2e/"),
        ] {
            let (mut req, _) = request(method, target, "{}");
            req.headers_mut()
                .insert(SCP_API_VERSION, HeaderValue::from_static("virtualserver 9"));
            let (_, headers, body) = send(&parts, &upstream, req).await;
            assert!(!body.contains(SECRET), "{method} {target}: {body}");
            for (name, v) in &headers {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes()).contains(SECRET),
                    "{method} {target}: {name}"
                );
            }
        }
        // Nor the request id echoed back, nor anything the upstream did not send.
        let (status, headers, body) =
            send(&parts, &upstream, request("GET", "/v1/images", "").0).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "upstream ok"));
        assert!(headers.get(&SCP_SIGNATURE).is_none() && headers.get(&SCP_ACCESSKEY).is_none());
    }

    #[tokio::test]
    async fn a_retry_is_signed_anew_and_sends_the_checked_bytes_again() {
        let (parts, _dir) = parts();
        let upstream = Upstream::default();
        upstream.busy.store(1, Ordering::SeqCst);
        let body = import_body();
        let (status, _, answer) = send(&parts, &upstream, request("POST", IMPORT, &body).0).await;
        assert_eq!((status, answer.as_str()), (StatusCode::OK, "upstream ok"));
        let seen = upstream.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the 503 was retried once");
        let mut stamps = Vec::new();
        for got in seen.iter() {
            let h = |n: &http::HeaderName| got.headers[n].to_str().unwrap().to_owned();
            let expected = crate::signer::sign(
                SECRET.as_bytes(),
                got.method.as_str(),
                &got.uri,
                &h(&SCP_TIMESTAMP),
                &h(&SCP_ACCESSKEY),
                ACCT,
                "Openapi",
            );
            assert_eq!(h(&SCP_SIGNATURE), expected.as_str());
            assert_eq!(
                got.body,
                body.as_bytes(),
                "each attempt sends the checked bytes"
            );
            stamps.push(h(&SCP_TIMESTAMP));
        }
        // Retry above signing: the second attempt has its own timestamp (the pause is at least
        // 25 ms), not a replay of the first one's. Were signing above retry, these would match.
        assert_ne!(stamps[0], stamps[1]);
    }

    #[tokio::test]
    async fn hygiene_runs_before_the_policies() {
        let (parts, _dir) = parts();
        let upstream = Upstream::default();
        // `Connection` makes the client's Scp-Api-Version hop-by-hop: hygiene drops it, so the
        // version pin (below hygiene) injects the pin instead of refusing the mismatch. Were the
        // pin above hygiene, this would be 400 api_version_mismatch.
        let (mut req, _) = request("GET", "/v1/images", "");
        req.headers_mut().insert(
            http::header::CONNECTION,
            HeaderValue::from_static("scp-api-version"),
        );
        req.headers_mut().insert(
            SCP_API_VERSION,
            HeaderValue::from_static("virtualserver 1.2"),
        );
        let (status, _, body) = send(&parts, &upstream, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = upstream.seen.lock().unwrap();
        let values: Vec<_> = seen[0].headers.get_all(&SCP_API_VERSION).iter().collect();
        assert_eq!(values, ["virtualserver 1.3"]);
        assert!(seen[0].headers.get(http::header::CONNECTION).is_none());
    }

    #[tokio::test]
    async fn errors_below_routing_still_name_their_service() {
        let (parts, _dir) = parts();
        let upstream = Upstream::default();
        let (status, _, _) = send(&parts, &upstream, request("DELETE", "/v1/images/x", "").0).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = send(&parts, &upstream, request("GET", "http://x/", "").0).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let text = parts.metrics.encode();
        assert!(
            text.contains(
                r#"service="virtualserver",method="DELETE",status_class="4xx",listener="plain"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"service="-",method="GET",status_class="4xx",listener="plain"} 1"#),
            "{text}"
        );
    }
}
