//! Forwarding: one pooled keep-alive client per upstream (HTTP/1.1, or HTTP/2 when TLS ALPN
//! agrees), bodies streamed both ways, and the only place upstream failures become errors.
//!
//! Guarantees: a client that drops mid-body makes the request body fail, which aborts the
//! upstream request (the upstream never sees a complete, truncated body); no response headers
//! within the service's `timeout`: [`UpstreamError::Timeout`] (504); cannot connect:
//! [`UpstreamError::Unreachable`] (502).
//!
//! Egress: an upstream reached through a corporate proxy ([`Egress`], read once at start from
//! `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`) gets an HTTP CONNECT tunnel, and TLS to the
//! upstream runs inside it, so the signature and TLS stay end to end. Loopback upstreams never
//! use the proxy. A proxy that is unreachable or refuses the CONNECT is a connect failure
//! (502 `upstream_unreachable`) whose message names the proxy.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Response, Uri};
use http_body_util::Either;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tower::Service;

use crate::body::{Body, NoTrailers};
use crate::config::{ServiceConfig, Upstream};
use crate::error::{ProxyError, UpstreamError};
use crate::route::Routed;

pub type HttpClient = Client<HttpsConnector<UpstreamConnector>, NoTrailers<Body>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the upstream took to send response headers; in response extensions for the log.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLatency(pub Duration);

/// Building a service's upstream client failed (TLS roots, or its egress proxy settings).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("services.{service}.ca_file {path}: {message}")]
    CaFile {
        service: String,
        path: String,
        message: String,
    },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("services.{service} (upstream {upstream}): {message}")]
    Egress {
        service: String,
        upstream: String,
        message: String,
    },
}

/// The egress proxy settings: `HTTPS_PROXY` for https upstreams, `HTTP_PROXY` for http ones,
/// `NO_PROXY` for the hosts that bypass them (curl's rules: comma-separated domains, which
/// match their subdomains too, IPs, CIDR ranges, or `*`). Read once at start
/// ([`Egress::from_env`]); nothing reads the environment on the request path.
///
/// An empty value counts as unset. Only `http://` proxies are supported (the proxy's own
/// scheme: the tunnel carries TLS to https upstreams either way); the port defaults to 80.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Egress {
    https_proxy: String,
    http_proxy: String,
    no_proxy: String,
}

/// Where a service's connections go, decided once per service at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressRoute {
    /// Straight to the upstream.
    Direct(DirectReason),
    /// Through an HTTP CONNECT tunnel.
    Proxy {
        /// `http://host:port` of the proxy, without credentials.
        proxy: String,
        /// The variable it came from (`HTTPS_PROXY` or `HTTP_PROXY`).
        var: &'static str,
        /// Whether `Proxy-Authorization` (basic, from the URL's user info) is sent.
        auth: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectReason {
    /// No proxy is set for the upstream's scheme.
    NoProxySet,
    /// The upstream is loopback: never proxied.
    Loopback,
    /// `NO_PROXY` matches the upstream host.
    NoProxyMatch,
}

/// What [`Egress::plan`] decided, with the credentials the public [`EgressRoute`] leaves out.
enum Plan {
    Direct(DirectReason),
    Tunnel {
        proxy: Uri,
        display: String,
        var: &'static str,
        auth: Option<HeaderValue>,
    },
}

impl Egress {
    /// No proxy: every upstream is connected to directly.
    pub fn direct() -> Self {
        Self::default()
    }

    /// From the process environment: `HTTPS_PROXY` (else `https_proxy`), `HTTP_PROXY` (else
    /// `http_proxy`), `NO_PROXY` (else `no_proxy`). `ALL_PROXY` is not used.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Egress::from_env`], with variables looked up by `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: [&str; 2]| {
            names
                .iter()
                .filter_map(|n| get(n))
                .map(|v| v.trim().to_owned())
                .find(|v| !v.is_empty())
                .unwrap_or_default()
        };
        Self {
            https_proxy: first(["HTTPS_PROXY", "https_proxy"]),
            http_proxy: first(["HTTP_PROXY", "http_proxy"]),
            no_proxy: first(["NO_PROXY", "no_proxy"]),
        }
    }

    /// Sets the proxy for https upstreams (`HTTPS_PROXY`).
    pub fn with_https_proxy(mut self, url: impl Into<String>) -> Self {
        self.https_proxy = url.into().trim().to_owned();
        self
    }

    /// Sets the proxy for http upstreams (`HTTP_PROXY`).
    pub fn with_http_proxy(mut self, url: impl Into<String>) -> Self {
        self.http_proxy = url.into().trim().to_owned();
        self
    }

    /// Sets the bypass list (`NO_PROXY`).
    pub fn with_no_proxy(mut self, list: impl Into<String>) -> Self {
        self.no_proxy = list.into();
        self
    }

    /// Whether any proxy is set.
    pub fn is_direct(&self) -> bool {
        self.https_proxy.is_empty() && self.http_proxy.is_empty()
    }

    /// Where connections to `upstream` go; an unusable proxy setting is an error.
    pub fn route(&self, upstream: &Upstream) -> Result<EgressRoute, String> {
        Ok(match self.plan(upstream)? {
            Plan::Direct(reason) => EgressRoute::Direct(reason),
            Plan::Tunnel {
                display, var, auth, ..
            } => EgressRoute::Proxy {
                proxy: display,
                var,
                auth: auth.is_some(),
            },
        })
    }

    fn plan(&self, upstream: &Upstream) -> Result<Plan, String> {
        let (var, raw) = if upstream.scheme == http::uri::Scheme::HTTPS {
            ("HTTPS_PROXY", &self.https_proxy)
        } else {
            ("HTTP_PROXY", &self.http_proxy)
        };
        if raw.is_empty() {
            return Ok(Plan::Direct(DirectReason::NoProxySet));
        }
        if upstream.is_loopback() {
            return Ok(Plan::Direct(DirectReason::Loopback));
        }
        let dst = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("cannot form a URI for the upstream: {e}"))?;
        // hyper-util's matcher parses the proxy URL (user info becomes basic auth) and applies
        // NO_PROXY; asked first without NO_PROXY, to tell a bad URL from a bypassed host.
        let unusable = || {
            format!(
                "{var} {:?} is not a usable proxy URL; write it as http://[USER:PASSWORD@]HOST:PORT",
                redact_userinfo(raw)
            )
        };
        let intercept = Matcher::builder()
            .http(raw)
            .https(raw)
            .build()
            .intercept(&dst)
            .ok_or_else(unusable)?;
        let proxy = intercept.uri();
        if proxy.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(format!(
                "{var} {:?}: only http:// proxies (HTTP CONNECT) are supported, not {}://",
                redact_userinfo(raw),
                proxy.scheme_str().unwrap_or_default()
            ));
        }
        let host = proxy.host().ok_or_else(unusable)?;
        let display = format!("http://{host}:{}", proxy.port_u16().unwrap_or(80));
        let bypass = Matcher::builder()
            .http(raw)
            .https(raw)
            .no(&self.no_proxy)
            .build()
            .intercept(&dst)
            .is_none();
        if bypass {
            return Ok(Plan::Direct(DirectReason::NoProxyMatch));
        }
        let proxy = format!("{display}/").parse().map_err(|_| unusable())?;
        Ok(Plan::Tunnel {
            proxy,
            display,
            var,
            auth: intercept.basic_auth().cloned(),
        })
    }
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("https_proxy", &redact_userinfo(&self.https_proxy))
            .field("http_proxy", &redact_userinfo(&self.http_proxy))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// `scheme://user:pass@host` -> `scheme://***@host`: proxy credentials never reach a log.
fn redact_userinfo(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), raw),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => raw.to_owned(),
    }
}

/// Opens the transport to an upstream: a direct TCP connection, or a CONNECT tunnel through
/// the egress proxy. TLS (for https upstreams) runs on top of either.
#[derive(Clone)]
pub struct UpstreamConnector(Connect);

#[derive(Clone)]
enum Connect {
    Direct(HttpConnector),
    Tunnel {
        tunnel: Box<Tunnel<HttpConnector>>,
        /// `http://host:port`, for messages.
        proxy: Arc<str>,
        /// Bounds reaching the proxy plus the CONNECT exchange.
        timeout: Duration,
    },
}

impl fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Connect::Direct(_) => f.write_str("UpstreamConnector::Direct"),
            Connect::Tunnel { proxy, .. } => write!(f, "UpstreamConnector::Tunnel({proxy})"),
        }
    }
}

impl Service<Uri> for UpstreamConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.0 {
            Connect::Direct(http) => http.poll_ready(cx).map_err(Into::into),
            Connect::Tunnel { tunnel, proxy, .. } => tunnel.poll_ready(cx).map_err(|e| {
                let failure = Failure::Tunnel(Box::new(e));
                TunnelFailed::new(proxy.clone(), "(not yet known)".into(), failure).into()
            }),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match &mut self.0 {
            Connect::Direct(http) => {
                let connecting = http.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Connect::Tunnel {
                tunnel,
                proxy,
                timeout,
            } => {
                let proxy = proxy.clone();
                let timeout = *timeout;
                // Tunnel assumes 443 when the URI has no port; an http upstream means 80.
                let (target, dst) = match with_port(&dst) {
                    Ok(v) => v,
                    Err(e) => {
                        let failed = TunnelFailed::new(proxy, dst.to_string(), Failure::Target(e));
                        return Box::pin(async move { Err(failed.into()) });
                    }
                };
                let connecting = tunnel.call(dst);
                Box::pin(async move {
                    match tokio::time::timeout(timeout, connecting).await {
                        Ok(Ok(io)) => Ok(io),
                        Ok(Err(e)) => {
                            let failure = Failure::Tunnel(Box::new(e));
                            Err(TunnelFailed::new(proxy, target, failure).into())
                        }
                        Err(_) => {
                            Err(TunnelFailed::new(proxy, target, Failure::Timeout(timeout)).into())
                        }
                    }
                })
            }
        }
    }
}

/// `host:port` for the CONNECT line, and `dst` with its port made explicit.
fn with_port(dst: &Uri) -> Result<(String, Uri), String> {
    let host = dst.host().ok_or("the upstream URI has no host")?;
    let port = dst.port_u16().unwrap_or(match dst.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    let target = format!("{host}:{port}");
    let uri = Uri::builder()
        .scheme(dst.scheme_str().unwrap_or("https"))
        .authority(target.as_str())
        .path_and_query("/")
        .build()
        .map_err(|e| e.to_string())?;
    Ok((target, uri))
}

enum Failure {
    /// hyper-util's tunnel error (its type is not exported): its text says whether the proxy
    /// was unreachable, refused the CONNECT, or wanted credentials; it stays the source.
    Tunnel(BoxError),
    Timeout(Duration),
    Target(String),
}

/// Setting up the CONNECT tunnel failed; the message names the proxy and the target.
#[derive(Debug)]
pub struct TunnelFailed {
    message: String,
    source: Option<BoxError>,
}

impl TunnelFailed {
    fn new(proxy: Arc<str>, target: String, failure: Failure) -> Self {
        let (message, source) = match failure {
            Failure::Tunnel(e) => (
                format!("CONNECT {target} through egress proxy {proxy} failed"),
                Some(e),
            ),
            Failure::Timeout(t) => (
                format!("egress proxy {proxy} did not complete CONNECT {target} within {t:?}"),
                None,
            ),
            Failure::Target(e) => (
                format!("cannot tunnel through egress proxy {proxy}: {e}"),
                None,
            ),
        };
        Self { message, source }
    }
}

impl fmt::Display for TunnelFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TunnelFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Builds the upstream client for one service, connecting directly or through the egress
/// proxy as `egress` decides for its upstream.
pub fn client_for(svc: &ServiceConfig, egress: &Egress) -> Result<HttpClient, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &svc.ca_file {
        let ca_err = |message: String| TlsSetupError::CaFile {
            service: svc.name.clone(),
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut added = 0;
        // rustls' own PEM reader (rustls-pki-types): certificate sections, others skipped.
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca_err(format!("not a PEM certificate bundle: {e}")))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_err("holds no PEM certificate".into()));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(svc.timeout));
    let plan = egress
        .plan(&svc.upstream)
        .map_err(|message| TlsSetupError::Egress {
            service: svc.name.clone(),
            upstream: svc.upstream.base.clone(),
            message,
        })?;
    let connector = match plan {
        Plan::Direct(reason) => {
            if reason != DirectReason::NoProxySet {
                tracing::info!(
                    service = %svc.name,
                    upstream = %svc.upstream.base,
                    reason = ?reason,
                    "egress: direct, not through the proxy"
                );
            }
            UpstreamConnector(Connect::Direct(http))
        }
        Plan::Tunnel {
            proxy,
            display: proxy_shown,
            var,
            auth,
        } => {
            tracing::info!(
                service = %svc.name,
                upstream = %svc.upstream.base,
                proxy = %proxy_shown,
                from = var,
                proxy_auth = auth.is_some(),
                "egress: through the proxy (CONNECT tunnel)"
            );
            let mut tunnel = Tunnel::new(proxy, http);
            if let Some(auth) = auth {
                tunnel = tunnel.with_auth(auth);
            }
            UpstreamConnector(Connect::Tunnel {
                tunnel: Box::new(tunnel),
                proxy: proxy_shown.into(),
                timeout: svc.timeout,
            })
        }
    };
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

/// The innermost service: sends the (signed) request to its routed upstream, with the
/// target's own pooled client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forward;

/// What forwarding needs of a routed target (implemented by [`crate::target::Target`]; a
/// trait so this module does not depend on the module that builds targets from it).
pub trait Endpoint {
    /// The target's pooled client.
    fn client(&self) -> &HttpClient;
    /// Its name, upstream and timeout.
    fn service(&self) -> &ServiceConfig;
}

impl<T: Endpoint> Service<Routed<T, Body>> for Forward {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ForwardFuture<T>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, routed: Routed<T, Body>) -> Self::Future {
        let target = routed.target().clone();
        // Started here, so the pooled client is borrowed, not cloned, per request.
        let started = Instant::now();
        let response = target
            .client()
            .request(routed.into_request().map(NoTrailers::new));
        ForwardFuture {
            response: tokio::time::timeout(target.service().timeout, response),
            target,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// The upstream's response headers within the service's timeout; no box.
    pub struct ForwardFuture<T> {
        #[pin]
        response: tokio::time::Timeout<ResponseFuture>,
        target: Arc<T>,
        started: Instant,
    }
}

impl<T: Endpoint> Future for ForwardFuture<T> {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.response.poll(cx));
        let svc = this.target.service();
        let upstream = || svc.upstream.base.clone();
        let service = || svc.name.clone();
        Poll::Ready(match result {
            Ok(Ok(resp)) => {
                let mut resp = resp.map(Either::Left);
                resp.extensions_mut()
                    .insert(UpstreamLatency(this.started.elapsed()));
                Ok(resp)
            }
            Ok(Err(source)) if source.is_connect() => Err(UpstreamError::Unreachable {
                service: service(),
                upstream: upstream(),
                source,
            }
            .into()),
            Ok(Err(source)) => Err(UpstreamError::Failed {
                service: service(),
                upstream: upstream(),
                source,
            }
            .into()),
            Err(_) => Err(UpstreamError::Timeout {
                service: service(),
                upstream: upstream(),
                timeout: svc.timeout,
            }
            .into()),
        })
    }
}
