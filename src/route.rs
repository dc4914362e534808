//! Routing: which configured service a request goes to, and the upstream URI it goes to.
//!
//! `/{name}/{tail...}` whose first segment is exactly a configured service name goes to that
//! service as `/{tail...}`; any other path goes to `routing.default_service` unchanged. The raw
//! query is kept byte for byte. Targets in absolute form and CONNECT are refused here, so the
//! client never chooses where a signed request goes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Method, Request, Response, Version};
use tower::{Layer, Service};

use crate::config::{Config, ServiceConfig};
use crate::error::ProxyError;

/// One upstream service as the request path needs it, built once at start.
#[derive(Debug)]
pub struct Target {
    /// Position in the routing table (and in the forwarder's client list).
    pub index: usize,
    /// The service name with a `'static` lifetime, for metric labels. Interned once per
    /// service at start (a few bytes, never freed).
    pub label: &'static str,
    pub config: ServiceConfig,
    /// `Host` header value: the upstream authority exactly as configured.
    pub host: HeaderValue,
    /// `Scp-Api-Version` value: `<service> <api_version>`.
    pub version_header: HeaderValue,
}

impl Target {
    pub fn new(index: usize, config: ServiceConfig) -> Result<Self, String> {
        let host =
            HeaderValue::from_str(config.upstream.authority.as_str()).map_err(|e| e.to_string())?;
        let version_header =
            HeaderValue::from_str(&format!("{} {}", config.name, config.api_version))
                .map_err(|e| e.to_string())?;
        Ok(Self {
            index,
            label: intern(&config.name),
            config,
            host,
            version_header,
        })
    }
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Returns a `'static` copy of `name`, reusing an earlier one so repeated starts (tests, config
/// reloads) do not grow memory.
fn intern(name: &str) -> &'static str {
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

/// The routing table.
#[derive(Clone, Debug)]
pub struct Routes {
    targets: Arc<[Arc<Target>]>,
    default: Option<usize>,
}

/// Where a path goes: the service index, and the path to send (None: unchanged).
#[derive(Debug, PartialEq, Eq)]
pub struct Split<'a> {
    pub target: usize,
    /// The path-and-query to forward when a service prefix was stripped.
    pub rewritten: Option<String>,
    /// Path as the service sees it (after any prefix), without the query.
    pub path: &'a str,
}

impl Routes {
    pub fn new(config: &Config) -> Result<Self, String> {
        let targets: Vec<Arc<Target>> = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| Target::new(i, s.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let default = config
            .routing
            .default_service
            .as_ref()
            .and_then(|d| targets.iter().position(|t| t.name() == d));
        Ok(Self {
            targets: targets.into(),
            default,
        })
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
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
}

/// The service a request was routed to, in its extensions for the layers below.
#[derive(Clone, Debug)]
pub struct Routed {
    pub target: Arc<Target>,
}

/// Routes each request and rewrites its URI to the upstream's absolute URI.
#[derive(Clone, Debug)]
pub struct RouteLayer {
    routes: Routes,
}

impl RouteLayer {
    pub fn new(routes: Routes) -> Self {
        Self { routes }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Route {
            routes: self.routes.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Route<S> {
    routes: Routes,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Route<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<ProxyError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response<RB>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.route(&mut req) {
            Ok(routed) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let mut resp = fut.await.map_err(Into::into)?;
                    // The trace layer above names the service from this.
                    resp.extensions_mut().insert(routed);
                    Ok(resp)
                })
            }
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

impl<S> Route<S> {
    fn route<B>(&self, req: &mut Request<B>) -> Result<Routed, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        // HTTP/1 targets must be origin form; HTTP/2 always carries :authority, which we ignore.
        if req.version() < Version::HTTP_2
            && (req.uri().scheme().is_some() || req.uri().authority().is_some())
        {
            return Err(ProxyError::AbsoluteForm);
        }
        let uri = req.uri();
        let split =
            self.routes
                .split(uri.path(), uri.query())
                .ok_or_else(|| ProxyError::NoRoute {
                    path: uri.path().to_owned(),
                    known: self.routes.known(),
                })?;
        let target = self.routes.targets[split.target].clone();
        let pq = match split.rewritten {
            Some(s) => PathAndQuery::try_from(s).map_err(|_| ProxyError::AbsoluteForm)?,
            None => match uri.path_and_query() {
                Some(pq) => pq.clone(),
                None => PathAndQuery::from_static("/"),
            },
        };
        let up = &target.config.upstream;
        let new_uri = Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::AbsoluteForm)?;
        *req.uri_mut() = new_uri;
        // The upstream connection's protocol is chosen by ALPN, not by the client: an h2c or
        // HTTP/1.0 client's version must not reach the pooled HTTP/1.1 or HTTP/2 connection.
        *req.version_mut() = Version::HTTP_11;
        let routed = Routed { target };
        req.extensions_mut().insert(routed.clone());
        Ok(routed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RoutingConfig, Upstream};

    fn svc(name: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            upstream: Upstream::parse("https://h.example").unwrap(),
            api_version: "1.0".into(),
            region: None,
            timeout: std::time::Duration::from_secs(1),
            ca_file: None,
            allow: None,
            allow_unsupported_version: false,
        }
    }

    fn routes(default: Option<&str>) -> Routes {
        let cfg = Config {
            server: Default::default(),
            credentials: crate::config::CredentialsConfig {
                watch_interval: std::time::Duration::ZERO,
                access_key: None,
                access_key_file: None,
                secret_key_file: None,
                account_id: String::new(),
                client_type: "Openapi".into(),
            },
            routing: RoutingConfig {
                default_service: default.map(Into::into),
            },
            services: vec![svc("virtualserver"), svc("iam")],
            emulator: Default::default(),
            sources: vec![],
        };
        Routes::new(&cfg).unwrap()
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
