//! Endpoint catalog rewrite: the IAM endpoint catalog (`GET /v1/endpoints` on a service that
//! serves it) is answered with every URL of a configured service's upstream pointing at that
//! service's prefix on the proxy (`http://<listen>/<service>`), so a client that follows the
//! catalog (as SCP's Go SDK does) stays on the proxy instead of calling the cloud directly
//! with the app's dummy key. The rewrite itself is the pure [`crate::endpoints`].
//!
//! Guarantees: only `GET /v1/endpoints` on a [`Target::serves_endpoint_catalog`] service is
//! touched, and only while `routing.rewrite_endpoint_catalog` is on (the default); every
//! other request and response passes as it is. A request that came through the forward proxy
//! ([`Intercepted`]) gets the services' public intercepted names, never a loopback URL (see
//! [`Via`]); on the plain listener, a Unix socket leaves its catalogs as they are. For a catalog
//! request the upstream is asked for an uncompressed answer (`Accept-Encoding: identity`; the
//! signature covers no header but the `Scp-*` ones, so this changes nothing signed); a
//! compressed answer anyway, a non-200, non-JSON one, or one whose `Content-Length` is over
//! `server.max_inspected_body_bytes` is passed on untouched (the first and the last with a
//! warning). A 200 JSON catalog is read within that size and the service's `timeout` (and its
//! `body_idle_timeout` between chunks); one that turns out larger than the limit is refused
//! with 502 `endpoint_catalog_too_large`, never cut short. When no URL matches, the body sent
//! on is the upstream's byte for byte; otherwise only the `url` strings change, and
//! `Content-Length` is recomputed (`ETag` dropped: it named the other bytes). Entries for
//! services the proxy does not serve are left as they are and named in
//! `Scp-Proxy-Unrouted: vpc,dns` and a debug line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::body::{Body, DownloadLimit, StallLimited};
use crate::endpoints::{is_catalog_request, EndpointMap, Via};
use crate::error::{ProxyError, UpstreamError};
use crate::route::Intercepted;
use crate::target::{RoutedRequest, Target};

/// Names the catalog entries the proxy does not serve (left pointing at the cloud).
pub const SCP_PROXY_UNROUTED: HeaderName = HeaderName::from_static("scp-proxy-unrouted");

/// Longest `Scp-Proxy-Unrouted` value; names past it are summarised as `...`.
const MAX_UNROUTED_HEADER: usize = 1024;

/// Rewrites endpoint catalogs with `map` (`None`: off), reading at most `max_body` bytes.
#[derive(Clone, Debug)]
pub struct EndpointCatalogLayer {
    map: Option<Arc<EndpointMap>>,
    max_body: usize,
}

impl EndpointCatalogLayer {
    pub fn new(map: Option<Arc<EndpointMap>>, max_body: usize) -> Self {
        Self { map, max_body }
    }
}

impl<S> Layer<S> for EndpointCatalogLayer {
    type Service = EndpointCatalog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EndpointCatalog {
            map: self.map.clone(),
            max_body: self.max_body,
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EndpointCatalog<S> {
    map: Option<Arc<EndpointMap>>,
    max_body: usize,
    inner: S,
}

impl<S, B> Service<RoutedRequest<B>> for EndpointCatalog<S>
where
    S: Service<RoutedRequest<B>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = EndpointCatalogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: RoutedRequest<B>) -> Self::Future {
        let (target, req) = routed.parts_mut();
        let ctx = match &self.map {
            Some(map)
                if target.serves_endpoint_catalog
                    && is_catalog_request(req.method(), req.uri().path()) =>
            {
                req.headers_mut().insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
                // Set only by the forward proxy; a client cannot send an extension.
                let via = match req.extensions().get::<Intercepted>() {
                    Some(_) => Via::Forward,
                    None => Via::Plain,
                };
                Some(Ctx {
                    via,
                    map: map.clone(),
                    max_body: self.max_body,
                    target: target.clone(),
                })
            }
            _ => None,
        };
        EndpointCatalogFuture::Call {
            inner: self.inner.call(routed),
            ctx,
        }
    }
}

/// What a catalog response needs once it arrives.
struct Ctx {
    via: Via,
    map: Arc<EndpointMap>,
    max_body: usize,
    target: Arc<Target>,
}

type Reading = Collect<Limited<StallLimited<Body>>>;

pin_project_lite::pin_project! {
    /// Waits for the upstream's answer; for a catalog, reads and rewrites it. No box.
    #[project = Proj]
    pub enum EndpointCatalogFuture<F> {
        Call {
            #[pin]
            inner: F,
            // `None`: not a catalog request; the answer passes as it is.
            ctx: Option<Ctx>,
        },
        Read {
            #[pin]
            body: Reading,
            #[pin]
            deadline: tokio::time::Sleep,
            head: Option<http::response::Parts>,
            ctx: Ctx,
        },
    }
}

impl<F> Future for EndpointCatalogFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                Proj::Call { inner, ctx } => {
                    let resp = ready!(inner.poll(cx))?;
                    let Some(ctx) = ctx.take() else {
                        return Poll::Ready(Ok(resp));
                    };
                    if !ctx.should_read(&resp) {
                        return Poll::Ready(Ok(resp));
                    }
                    let (head, body) = resp.into_parts();
                    let stall = head.extensions.get::<DownloadLimit>().cloned();
                    let body = Limited::new(StallLimited::new(body, stall), ctx.max_body).collect();
                    let deadline = tokio::time::sleep(ctx.timeout());
                    self.set(EndpointCatalogFuture::Read {
                        body,
                        deadline,
                        head: Some(head),
                        ctx,
                    });
                }
                Proj::Read {
                    body,
                    deadline,
                    head,
                    ctx,
                } => {
                    let bytes = match body.poll(cx) {
                        Poll::Ready(Ok(collected)) => collected.to_bytes(),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(ctx.read_error(e))),
                        Poll::Pending => {
                            ready!(deadline.poll(cx));
                            return Poll::Ready(Err(ctx.timed_out()));
                        }
                    };
                    let head = head
                        .take()
                        .expect("EndpointCatalogFuture polled after completion");
                    return Poll::Ready(Ok(ctx.finish(head, bytes)));
                }
            }
        }
    }
}

impl Ctx {
    fn service(&self) -> &'static str {
        self.target.label
    }

    fn timeout(&self) -> Duration {
        self.target.config.timeout
    }

    fn upstream(&self) -> String {
        self.target.config.upstream.base.clone()
    }

    /// Whether the answer is a catalog the rewrite can read; says why not when that deserves
    /// the operator's attention.
    fn should_read(&self, resp: &Response<Body>) -> bool {
        if resp.status() != StatusCode::OK {
            return false;
        }
        let headers = resp.headers();
        if let Some(enc) = headers
            .get(header::CONTENT_ENCODING)
            .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            tracing::warn!(
                service = self.service(),
                content_encoding = %String::from_utf8_lossy(enc.as_bytes()),
                "endpoint catalog passed on unchanged: the upstream compressed it although asked for identity, so its URLs still point around the proxy"
            );
            return false;
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.to_ascii_lowercase().contains("json"));
        if !json {
            return false;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = length.filter(|n| *n > self.max_body as u64) {
            tracing::warn!(
                service = self.service(),
                content_length = n,
                limit = self.max_body,
                "endpoint catalog passed on unchanged: larger than server.max_inspected_body_bytes, so its URLs still point around the proxy"
            );
            return false;
        }
        true
    }

    fn read_error(&self, e: Box<dyn std::error::Error + Send + Sync>) -> ProxyError {
        if e.is::<LengthLimitError>() {
            UpstreamError::CatalogTooLarge {
                service: self.service().to_owned(),
                upstream: self.upstream(),
                limit: self.max_body,
            }
        } else {
            UpstreamError::CatalogRead {
                service: self.service().to_owned(),
                upstream: self.upstream(),
                source: e,
            }
        }
        .into()
    }

    fn timed_out(&self) -> ProxyError {
        UpstreamError::CatalogTimeout {
            service: self.service().to_owned(),
            upstream: self.upstream(),
            timeout: self.timeout(),
        }
        .into()
    }

    /// The answer to send: rewritten when anything matched, else the bytes read.
    fn finish(&self, mut head: http::response::Parts, mut bytes: Bytes) -> Response<Body> {
        let service = self.service();
        match self.map.rewrite(self.via, &bytes) {
            Err(e) => tracing::warn!(
                service,
                error = %e,
                cause = %std::error::Error::source(&e).map_or(String::new(), |s| s.to_string()),
                "endpoint catalog passed on unchanged: the body is not one"
            ),
            Ok(r) => {
                if let Some(new) = r.body {
                    bytes = Bytes::from(new);
                    head.headers.remove(header::ETAG);
                }
                tracing::debug!(
                    service,
                    via = ?self.via,
                    rewritten = r.rewritten,
                    "endpoint catalog: URLs of configured services point at the proxy"
                );
                if let Some(v) = unrouted_header(&r.unrouted) {
                    tracing::debug!(
                        service,
                        unrouted = %String::from_utf8_lossy(v.as_bytes()),
                        "endpoint catalog: entries for services the proxy does not serve left as they are"
                    );
                    head.headers.insert(SCP_PROXY_UNROUTED, v);
                }
            }
        }
        // Now one buffer: its length is known, whatever framing the upstream used.
        head.headers.remove(header::TRANSFER_ENCODING);
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Response::from_parts(head, crate::body::full(bytes))
    }
}

/// `vpc,dns`: the names as a header value (characters outside a token become `_`), bounded.
fn unrouted_header(names: &[String]) -> Option<HeaderValue> {
    let mut v = String::new();
    for name in names {
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-._:~".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if v.len() + clean.len() + 1 > MAX_UNROUTED_HEADER {
            v.push_str(",...");
            break;
        }
        if !v.is_empty() {
            v.push(',');
        }
        v.push_str(&clean);
    }
    (!v.is_empty())
        .then(|| HeaderValue::from_str(&v).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tower::ServiceExt;

    use super::*;
    use crate::config::Upstream;
    use crate::layers::test_support::{routed, service, target_for};
    use crate::metrics::Metrics;

    const VS: &str = "https://virtualserver.kr-west1.e.samsungsdscloud.com";
    const IAM: &str = "https://iam.kr-west1.e.samsungsdscloud.com";

    fn map() -> Arc<EndpointMap> {
        let vs = Upstream::parse(VS).unwrap();
        let iam = Upstream::parse(IAM).unwrap();
        Arc::new(EndpointMap::new(
            [("virtualserver", &vs, &[][..]), ("iam", &iam, &[])],
            Some("http://127.0.0.1:8080".into()),
        ))
    }

    fn catalog() -> String {
        format!(
            r#"{{"endpoints":[{{"service_name":"virtualserver","url":"{VS}"}},{{"service_name":"iam","url":"{IAM}"}},{{"service_name":"vpc","url":"https://vpc.kr-west1.e.samsungsdscloud.com"}}]}}"#
        )
    }

    /// An upstream answering `resp()` to every request, keeping the request headers it saw.
    #[derive(Clone)]
    struct Upstream2 {
        seen: Arc<Mutex<Vec<http::HeaderMap>>>,
        resp: Arc<dyn Fn() -> Response<Body> + Send + Sync>,
    }

    impl Upstream2 {
        fn new(resp: impl Fn() -> Response<Body> + Send + Sync + 'static) -> Self {
            Self {
                seen: Arc::default(),
                resp: Arc::new(resp),
            }
        }
        fn service(
            &self,
        ) -> impl Service<
            RoutedRequest<Body>,
            Response = Response<Body>,
            Error = ProxyError,
            Future = impl Send,
        > + Clone {
            let this = self.clone();
            tower::service_fn(move |r: RoutedRequest<Body>| {
                this.seen
                    .lock()
                    .unwrap()
                    .push(r.request().headers().clone());
                let resp = (this.resp)();
                async move { Ok::<_, ProxyError>(resp) }
            })
        }
    }

    type MakeResponse = Box<dyn Fn() -> Response<Body> + Send + Sync>;

    fn json(body: impl Into<Bytes>) -> Response<Body> {
        let body = body.into();
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::ETAG, "\"v1\"")
            .body(crate::body::full(body))
            .unwrap()
    }

    async fn call(
        layer: EndpointCatalogLayer,
        svc: &str,
        method: &str,
        path: &str,
        up: &Upstream2,
    ) -> Result<(http::response::Parts, Bytes), ProxyError> {
        call_via(layer, svc, method, path, up, Via::Plain).await
    }

    async fn call_via(
        layer: EndpointCatalogLayer,
        svc: &str,
        method: &str,
        path: &str,
        up: &Upstream2,
        via: Via,
    ) -> Result<(http::response::Parts, Bytes), ProxyError> {
        let target = target_for(service(svc), &Metrics::new());
        let mut req = routed(&target, method, path, crate::body::empty());
        if via == Via::Forward {
            req.request_mut().extensions_mut().insert(Intercepted {
                service: std::sync::Arc::from(svc),
                authority: None,
            });
        }
        req.request_mut()
            .headers_mut()
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let resp = layer.layer(up.service()).oneshot(req).await?;
        let (head, body) = resp.into_parts();
        Ok((head, body.collect().await.unwrap().to_bytes()))
    }

    fn on() -> EndpointCatalogLayer {
        EndpointCatalogLayer::new(Some(map()), 64 * 1024)
    }

    #[tokio::test]
    async fn the_catalog_points_at_the_proxy_and_names_what_it_does_not_serve() {
        let up = Upstream2::new(|| json(catalog()));
        let (head, body) = call(on(), "iam", "GET", "/v1/endpoints", &up)
            .await
            .unwrap();
        let want = catalog()
            .replace(VS, "http://127.0.0.1:8080/virtualserver")
            .replace(IAM, "http://127.0.0.1:8080/iam");
        assert_eq!(body, want.as_bytes());
        assert_eq!(head.headers[header::CONTENT_LENGTH], want.len().to_string());
        assert_eq!(head.headers[SCP_PROXY_UNROUTED], "vpc");
        assert!(head.headers.get(header::ETAG).is_none());
        // Asked uncompressed, whatever the client accepts.
        assert_eq!(
            up.seen.lock().unwrap()[0][header::ACCEPT_ENCODING],
            "identity"
        );
    }

    #[tokio::test]
    async fn through_the_forward_proxy_public_urls_stay_public() {
        // Neither service intercepts another name: both upstreams are the public names the
        // tunnel reaches, so the catalog stands byte for byte (no loopback URL).
        let up = Upstream2::new(|| json(catalog()));
        let (head, body) = call_via(on(), "iam", "GET", "/v1/endpoints", &up, Via::Forward)
            .await
            .unwrap();
        assert_eq!(body, catalog().as_bytes());
        assert_eq!(head.headers[SCP_PROXY_UNROUTED], "vpc");
        assert_eq!(head.headers[header::ETAG], "\"v1\"");
    }

    #[tokio::test]
    async fn nothing_to_rewrite_is_passed_on_byte_for_byte() {
        let raw =
            " {\"endpoints\" :[ {\"service_name\":\"dns\",\"url\":\"https://dns.example\"} ]}\n";
        let up = Upstream2::new(move || json(raw));
        let (head, body) = call(on(), "iam", "GET", "/v1/endpoints", &up)
            .await
            .unwrap();
        assert_eq!(body, raw.as_bytes());
        assert_eq!(head.headers[SCP_PROXY_UNROUTED], "dns");
        assert_eq!(head.headers[header::ETAG], "\"v1\"");
        // Not a catalog at all: unchanged too.
        let up = Upstream2::new(|| json("{\"users\":[]}"));
        let (head, body) = call(on(), "iam", "GET", "/v1/endpoints", &up)
            .await
            .unwrap();
        assert_eq!(body, "{\"users\":[]}".as_bytes());
        assert!(head.headers.get(SCP_PROXY_UNROUTED).is_none());
    }

    #[tokio::test]
    async fn other_requests_services_and_answers_pass_untouched() {
        let up = Upstream2::new(|| json(catalog()));
        let off = EndpointCatalogLayer::new(None, 64 * 1024);
        for (layer, svc, method, path) in [
            (on(), "iam", "GET", "/v1/users"),
            (on(), "iam", "POST", "/v1/endpoints"),
            (on(), "virtualserver", "GET", "/v1/endpoints"),
            (off, "iam", "GET", "/v1/endpoints"),
        ] {
            let (head, body) = call(layer, svc, method, path, &up).await.unwrap();
            assert_eq!(body, catalog().as_bytes(), "{svc} {method} {path}");
            assert!(head.headers.get(SCP_PROXY_UNROUTED).is_none());
            let seen = up.seen.lock().unwrap();
            assert_eq!(
                seen.last().unwrap()[header::ACCEPT_ENCODING],
                "gzip",
                "{svc} {method} {path}"
            );
        }
        // Compressed anyway, not JSON, not 200, declared over the limit: as they came.
        let cases: Vec<(MakeResponse, &str)> = vec![
            (
                Box::new(|| {
                    let mut r = json(catalog());
                    r.headers_mut()
                        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    r
                }),
                "gzip",
            ),
            (
                Box::new(|| {
                    let mut r = json(catalog());
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
                    r
                }),
                "html",
            ),
            (
                Box::new(|| {
                    let mut r = json(catalog());
                    *r.status_mut() = StatusCode::NON_AUTHORITATIVE_INFORMATION;
                    r
                }),
                "203",
            ),
        ];
        for (resp, what) in cases {
            let up = Upstream2::new(resp);
            let (_, body) = call(on(), "iam", "GET", "/v1/endpoints", &up)
                .await
                .unwrap();
            assert_eq!(body, catalog().as_bytes(), "{what}");
        }
        let small = EndpointCatalogLayer::new(Some(map()), 16);
        let up = Upstream2::new(|| json(catalog()));
        let (_, body) = call(small, "iam", "GET", "/v1/endpoints", &up)
            .await
            .unwrap();
        assert_eq!(body, catalog().as_bytes());
    }

    #[tokio::test]
    async fn a_catalog_growing_past_the_limit_is_refused_not_cut() {
        // No Content-Length: found out while reading.
        let up = Upstream2::new(|| {
            let mut r = json(catalog());
            r.headers_mut().remove(header::CONTENT_LENGTH);
            r
        });
        let small = EndpointCatalogLayer::new(Some(map()), 16);
        let err = call(small, "iam", "GET", "/v1/endpoints", &up)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "endpoint_catalog_too_large");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(
            err.message()
                .contains("routing.rewrite_endpoint_catalog = false"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn the_unrouted_header_is_a_bounded_token_list() {
        assert_eq!(unrouted_header(&[]), None);
        let v = unrouted_header(&["vpc".into(), "dns".into(), "a b,c\u{e9}".into()]).unwrap();
        assert_eq!(v, "vpc,dns,a_b_c_");
        let many: Vec<String> = (0..500).map(|i| format!("svc{i}")).collect();
        let v = unrouted_header(&many).unwrap();
        assert!(v.len() <= MAX_UNROUTED_HEADER + 4, "{}", v.len());
        assert!(v.to_str().unwrap().ends_with(",..."));
    }
}
