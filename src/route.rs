//! Routing: which configured service a request goes to, and the upstream URI it goes to.
//!
//! `/{name}/{tail...}` whose first segment is exactly a configured service name goes to that
//! service as `/{tail...}`; any other path goes to `routing.default_service` unchanged. The raw
//! query is kept byte for byte. Targets in absolute form and CONNECT are refused here, so the
//! client never chooses where a signed request goes.
//!
//! Guarantees: every layer below routing takes a [`Routed`] request, which only [`Route`]
//! makes; a request that was not routed cannot reach a per-service policy (a type error, not
//! a silent pass). The routed target is the one the URI was rewritten to. A response, and an
//! error raised below routing, carries the service's name ([`ServedBy`], [`Rejection`]).
//!
//! The module is generic over the target type ([`Destination`]), so it stays a pure core: it
//! knows names and upstreams, not what the layers below keep per service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use tower::{Layer, Service};

use crate::config::Upstream;
use crate::error::{ProxyError, Rejection, ServedBy};

/// What routing needs to know about a target.
pub trait Destination {
    /// The configured service name (the path prefix).
    fn name(&self) -> &str;
    /// The same name, `'static`, for metric labels.
    fn label(&self) -> &'static str;
    /// Where the request's URI is rewritten to.
    fn upstream(&self) -> &Upstream;
}

/// Returns a `'static` copy of `name`, reusing an earlier one so repeated starts (tests, config
/// reloads) do not grow memory.
pub(crate) fn intern(name: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    leaked
}

/// The routing table: the targets, built once at start, and the default one.
#[derive(Debug)]
pub struct Routes<T> {
    targets: Arc<[Arc<T>]>,
    default: Option<usize>,
}

impl<T> Clone for Routes<T> {
    fn clone(&self) -> Self {
        Self {
            targets: self.targets.clone(),
            default: self.default,
        }
    }
}

/// Where a path goes: the target's position, and the path to send (None: unchanged).
#[derive(Debug, PartialEq, Eq)]
pub struct Split<'a> {
    pub target: usize,
    /// The path-and-query to forward when a service prefix was stripped.
    pub rewritten: Option<String>,
    /// Path as the service sees it (after any prefix), without the query.
    pub path: &'a str,
}

impl<T: Destination> Routes<T> {
    /// `default`: `routing.default_service`; it must name one of `targets`.
    pub fn new(targets: Vec<Arc<T>>, default: Option<&str>) -> Result<Self, String> {
        let default = match default {
            None => None,
            Some(d) => Some(
                targets
                    .iter()
                    .position(|t| t.name() == d)
                    .ok_or_else(|| format!("routing.default_service {d:?} is not a service"))?,
            ),
        };
        Ok(Self {
            targets: targets.into(),
            default,
        })
    }

    pub fn targets(&self) -> &[Arc<T>] {
        &self.targets
    }

    /// The target named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<T>> {
        self.targets.iter().find(|t| t.name() == name)
    }

    /// Pure decision over the raw path and query.
    pub fn split<'a>(&self, path: &'a str, query: Option<&str>) -> Option<Split<'a>> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let (first, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        if let Some(i) = self.targets.iter().position(|t| t.name() == first) {
            let tail_path = tail.unwrap_or("/");
            let mut rewritten =
                String::with_capacity(tail_path.len() + query.map_or(0, |q| q.len() + 1));
            rewritten.push_str(tail_path);
            if let Some(q) = query {
                rewritten.push('?');
                rewritten.push_str(q);
            }
            return Some(Split {
                target: i,
                rewritten: Some(rewritten),
                path: tail_path,
            });
        }
        self.default.map(|target| Split {
            target,
            rewritten: None,
            path,
        })
    }

    fn known(&self) -> String {
        self.targets
            .iter()
            .map(|t| format!("/{}/", t.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Chooses the target and rewrites the URI to the upstream's absolute URI. A request the
    /// forward proxy accepted ([`Intercepted`]) goes to the service its authority names, its
    /// path unchanged; any other by its path.
    pub fn route<B>(&self, req: Request<B>) -> Result<Routed<T, B>, ProxyError> {
        if let Some(i) = req.extensions().get::<Intercepted>() {
            i.check_host(&req)?;
            // By name in the table this request runs on: a reload may have added or removed
            // services since the tunnel opened, so a position could name another one.
            let target = self
                .targets
                .iter()
                .find(|t| t.name() == &*i.service)
                .cloned()
                .ok_or_else(|| ProxyError::InterceptedServiceGone {
                    service: i.service.to_string(),
                })?;
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            return Self::rewrite(req, target, pq);
        }
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        // HTTP/1 targets must be origin form; HTTP/2 always carries :authority, which we ignore.
        if req.version() < Version::HTTP_2
            && (req.uri().scheme().is_some() || req.uri().authority().is_some())
        {
            return Err(ProxyError::AbsoluteForm);
        }
        // `OPTIONS *` / `GET *` address the server, not a resource: no service has a path
        // `*`, and forwarding it unrouted would sign a request the client did not aim anywhere.
        if req.uri().path() == "*" {
            return Err(ProxyError::AsteriskForm {
                method: req.method().to_string(),
            });
        }
        let uri = req.uri();
        let split = self
            .split(uri.path(), uri.query())
            .ok_or_else(|| ProxyError::NoRoute {
                path: uri.path().to_owned(),
                known: self.known(),
            })?;
        let bad_path = || ProxyError::InvalidPath {
            path: uri.path().to_owned(),
        };
        let target = self.targets[split.target].clone();
        let pq = match split.rewritten {
            Some(s) => PathAndQuery::try_from(s).map_err(|_| bad_path())?,
            None => match uri.path_and_query() {
                Some(pq) => pq.clone(),
                None => PathAndQuery::from_static("/"),
            },
        };
        Self::rewrite(req, target, pq)
    }

    /// Points `req` at `target`'s upstream with `pq` as its path and query.
    fn rewrite<B>(
        mut req: Request<B>,
        target: Arc<T>,
        pq: PathAndQuery,
    ) -> Result<Routed<T, B>, ProxyError> {
        let up = target.upstream();
        let new_uri = Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::InvalidPath {
                path: req.uri().path().to_owned(),
            })?;
        *req.uri_mut() = new_uri;
        // The upstream connection's protocol is chosen by ALPN, not by the client: an h2c or
        // HTTP/1.0 client's version must not reach the pooled HTTP/1.1 or HTTP/2 connection.
        *req.version_mut() = Version::HTTP_11;
        Ok(Routed {
            target,
            request: req,
        })
    }
}

/// Set by the forward proxy on a request it accepted (inside a CONNECT tunnel, or in absolute
/// form): the service its authority names, so routing takes that instead of the path. The
/// forward proxy decides the service once, from the authority; routing only applies it, so
/// both listeners share one request path. Only the proxy's own code inserts extensions; a
/// client cannot send one.
#[derive(Clone, Debug)]
pub struct Intercepted {
    /// The service's name; routing looks it up in the table the request runs on.
    pub service: Arc<str>,
    /// The CONNECT authority the request's Host must name (None: absolute form, whose URI is
    /// the target and whose Host is not compared).
    pub authority: Option<http::uri::Authority>,
}

impl Intercepted {
    /// The request's host (`:authority` in HTTP/2, else `Host`) must name the tunnel's
    /// authority; the port may be left out when it is 443.
    fn check_host<B>(&self, req: &Request<B>) -> Result<(), ProxyError> {
        let Some(want) = &self.authority else {
            return Ok(());
        };
        let sent = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        let same = sent
            .as_deref()
            .and_then(|s| s.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| {
                a.host().eq_ignore_ascii_case(want.host())
                    && a.port_u16().unwrap_or(443) == want.port_u16().unwrap_or(443)
            });
        if same {
            Ok(())
        } else {
            Err(ProxyError::Misdirected {
                host: sent.unwrap_or_default(),
                authority: want.to_string(),
            })
        }
    }
}

/// A request that routing has sent to `target`: the only input the layers below accept.
#[derive(Debug)]
pub struct Routed<T, B> {
    target: Arc<T>,
    request: Request<B>,
}

impl<T, B> Routed<T, B> {
    pub fn target(&self) -> &Arc<T> {
        &self.target
    }
    pub fn request(&self) -> &Request<B> {
        &self.request
    }
    pub fn request_mut(&mut self) -> &mut Request<B> {
        &mut self.request
    }
    /// The target and the request, mutable together.
    pub fn parts_mut(&mut self) -> (&Arc<T>, &mut Request<B>) {
        (&self.target, &mut self.request)
    }
    /// Changes the request (its body, say) while it stays routed to the same target.
    pub fn map_request<B2>(self, f: impl FnOnce(Request<B>) -> Request<B2>) -> Routed<T, B2> {
        Routed {
            target: self.target,
            request: f(self.request),
        }
    }
    /// Another request routed to the same target (a retry's fresh copy).
    pub fn with_request<B2>(&self, request: Request<B2>) -> Routed<T, B2> {
        Routed {
            target: self.target.clone(),
            request,
        }
    }
    /// The request to send upstream.
    pub fn into_request(self) -> Request<B> {
        self.request
    }
    /// For layer tests: a request as routing would leave it (the URI must already be the
    /// upstream's).
    #[cfg(test)]
    pub fn for_test(target: Arc<T>, request: Request<B>) -> Self {
        Self { target, request }
    }
}

/// Routes each request and rewrites its URI to the upstream's absolute URI.
#[derive(Debug)]
pub(crate) struct RouteLayer<T> {
    routes: Routes<T>,
}

impl<T> Clone for RouteLayer<T> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
        }
    }
}

impl<T> RouteLayer<T> {
    pub(crate) fn new(routes: Routes<T>) -> Self {
        Self { routes }
    }
}

impl<S, T> Layer<S> for RouteLayer<T> {
    type Service = Route<S, T>;
    fn layer(&self, inner: S) -> Self::Service {
        Route {
            routes: self.routes.clone(),
            inner,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Route<S, T> {
    routes: Routes<T>,
    inner: S,
}

impl<S: Clone, T> Clone for Route<S, T> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S, T, B, RB> Service<Request<B>> for Route<S, T>
where
    T: Destination,
    S: Service<Routed<T, B>, Response = Response<RB>>,
    S::Error: Into<ProxyError>,
{
    type Response = Response<RB>;
    type Error = Rejection;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Rejection::from(e.into()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.routes.route(req) {
            Ok(routed) => {
                let service = routed.target.label();
                RouteFuture::Routed {
                    inner: self.inner.call(routed),
                    service,
                }
            }
            Err(e) => RouteFuture::Refused { error: Some(e) },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, marked with the service; or routing's refusal.
    #[project = RouteProj]
    pub enum RouteFuture<F> {
        Routed { #[pin] inner: F, service: &'static str },
        Refused { error: Option<ProxyError> },
    }
}

impl<F, RB, E> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<ProxyError>,
{
    type Output = Result<Response<RB>, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteProj::Routed { inner, service } => {
                Poll::Ready(match std::task::ready!(inner.poll(cx)) {
                    Ok(mut resp) => {
                        resp.extensions_mut().insert(ServedBy(service));
                        Ok(resp)
                    }
                    Err(e) => Err(Rejection::in_service(e.into(), service)),
                })
            }
            RouteProj::Refused { error } => match error.take() {
                Some(e) => Poll::Ready(Err(e.into())),
                None => Poll::Pending,
            },
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Svc(String, Upstream);

    impl Destination for Svc {
        fn name(&self) -> &str {
            &self.0
        }
        fn label(&self) -> &'static str {
            intern(&self.0)
        }
        fn upstream(&self) -> &Upstream {
            &self.1
        }
    }

    fn svc(name: &str) -> Arc<Svc> {
        Arc::new(Svc(
            name.into(),
            Upstream::parse(&format!("https://{name}.example")).unwrap(),
        ))
    }

    fn routes(default: Option<&str>) -> Routes<Svc> {
        Routes::new(vec![svc("virtualserver"), svc("iam")], default).unwrap()
    }

    #[test]
    fn default_must_be_a_service() {
        let e = Routes::new(vec![svc("iam")], Some("nope")).unwrap_err();
        assert!(e.contains("routing.default_service \"nope\""), "{e}");
    }

    #[test]
    fn route_rewrites_to_the_upstream_and_refuses_what_it_cannot_route() {
        let r = routes(None);
        let req = Request::get("/iam/v1/x?a=%20").body(()).unwrap();
        let routed = r.route(req).unwrap();
        assert_eq!(routed.target().name(), "iam");
        assert_eq!(routed.request().uri(), "https://iam.example/v1/x?a=%20");
        assert_eq!(routed.request().version(), Version::HTTP_11);
        for (req, code) in [
            (
                Request::connect("iam.example:443").body(()).unwrap(),
                "connect_not_supported",
            ),
            (
                Request::get("http://evil.example/iam/x").body(()).unwrap(),
                "absolute_form_target",
            ),
            (Request::get("/v1/x").body(()).unwrap(), "no_route"),
        ] {
            assert_eq!(r.route(req).unwrap_err().code(), code);
        }
    }

    #[test]
    fn splits_service_prefix_and_keeps_raw_query() {
        let r = routes(Some("virtualserver"));
        let s = r.split("/iam/v1/endpoints", Some("a=%20&a=b")).unwrap();
        assert_eq!(s.target, 1);
        assert_eq!(s.rewritten.as_deref(), Some("/v1/endpoints?a=%20&a=b"));
        assert_eq!(s.path, "/v1/endpoints");
        let s = r.split("/iam", None).unwrap();
        assert_eq!(s.rewritten.as_deref(), Some("/"));
        let s = r.split("/iam", Some("")).unwrap();
        assert_eq!(s.rewritten.as_deref(), Some("/?"));
        // Only an exact first segment is a prefix.
        let s = r.split("/iamx/v1", None).unwrap();
        assert_eq!((s.target, s.rewritten), (0, None));
        let s = r.split("/v1/images/abc%2Fdef", Some("x=1")).unwrap();
        assert_eq!(
            (s.target, s.rewritten, s.path),
            (0, None, "/v1/images/abc%2Fdef")
        );
        let s = r.split("/virtualserver/v1/images/a%2Fb", None).unwrap();
        assert_eq!(s.rewritten.as_deref(), Some("/v1/images/a%2Fb"));
    }

    #[test]
    fn no_default_no_match_is_none() {
        let r = routes(None);
        assert!(r.split("/v1/images", None).is_none());
        assert!(r.split("/", None).is_none());
        assert_eq!(r.split("/iam/x", None).unwrap().target, 1);
    }

    #[test]
    fn empty_query_is_kept_by_http_crate() {
        // The signature covers "?" when the target had one; http::PathAndQuery keeps it.
        let pq = PathAndQuery::from_static("/a?");
        assert_eq!(pq.as_str(), "/a?");
        assert_eq!(pq.query(), Some(""));
    }
}
