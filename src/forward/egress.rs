//! The egress plan: whether a service's connections go straight to its upstream or through
//! the corporate proxy (`HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`), decided once at start.
//!
//! Guarantees: loopback upstreams are never proxied; only `http://` proxies are accepted;
//! proxy credentials never reach a log or an error message ([`redact_userinfo`]).

use std::fmt;

use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;

use crate::config::Upstream;

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
pub(super) enum Plan {
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
        Self::from_lookup(crate::env::var)
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

    pub(super) fn plan(&self, upstream: &Upstream) -> Result<Plan, String> {
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
