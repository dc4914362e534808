//! Forward-proxy mode: a second, opt-in data-plane listener (`[forward_proxy] listen`) that
//! speaks the HTTP forward-proxy protocol, so unchanged SCP tools (SDKs, CLIs, Terraform) are
//! signed through `HTTPS_PROXY` plus a CA bundle.
//!
//! * `CONNECT host:port` is accepted only for the public authority of a configured service (its
//!   upstream's, or one listed in `services.NAME.intercept`); anything else is answered 403
//!   with the allowed authorities, and no connection is opened anywhere. An accepted tunnel is
//!   terminated here ([`tunnel`]) with a leaf certificate from [`ca`].
//! * Absolute-form plain-HTTP requests (`GET http://host/...`) for a configured authority are
//!   routed the same way; others 403.
//! * Requests inside a tunnel, and accepted absolute-form requests, run through the one
//!   data-plane stack the plain listener uses, carrying [`Intercepted`]: routing then takes
//!   the service from the authority instead of the path (the decision made here, once), and
//!   everything below it is the same code (hygiene, version pin, allowlist, image import,
//!   fresh signature, forward to the service's real upstream).
//!
//! Guarantees: no blind tunnel (bytes only ever reach the service's configured upstream, as a
//! signed request); the proxy never resolves or connects to the public host; refusals are
//! counted by reason (`scp_auth_proxy_connect_refusals_total`); SIGTERM drains tunnels the way
//! the plain listener drains connections. The listener is the plain one's serve loop
//! ([`crate::server`], HTTP/1 only): the same connection cap, time limits and per-burst
//! serving, so an idle connection between requests holds no hyper buffers (an open tunnel
//! holds its TLS and HTTP state).

pub mod ca;
pub mod tunnel;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::body::Body;
use crate::config::{ServerConfig, ServiceConfig};
use crate::error::json_error;
use crate::layers::trace::Mode;
use crate::metrics::{Metrics, ReasonLabel};
use crate::route::Intercepted;
use crate::server::{HttpService, Protocols, Takeover};

/// The authorities the forward proxy intercepts, each naming one service.
#[derive(Debug)]
pub struct Intercepts {
    /// `host:port`, lower-case -> the service's name.
    by_authority: HashMap<String, Arc<str>>,
    /// Sorted, for messages.
    allowed: Vec<String>,
}

impl Intercepts {
    /// `services.NAME.intercept` entries first (config validation keeps them unique), then each
    /// upstream's own authority unless two services share it (then it names neither).
    pub fn new(services: &[ServiceConfig]) -> Self {
        let names: Vec<Arc<str>> = services
            .iter()
            .map(|s| Arc::from(s.name.as_str()))
            .collect();
        let mut by_authority = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            for a in &s.intercept {
                by_authority.insert(a.as_str().to_owned(), names[i].clone());
            }
        }
        let mut upstreams: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            if let Some(own) = s.public_authorities().into_iter().next() {
                upstreams.entry(own).or_default().push(i);
            }
        }
        for (a, owners) in upstreams {
            match owners.as_slice() {
                [one] => {
                    by_authority.entry(a).or_insert_with(|| names[*one].clone());
                }
                _ if by_authority.contains_key(&a) => {}
                _ => tracing::warn!(
                    authority = %a,
                    services = ?owners.iter().map(|i| services[*i].name.as_str()).collect::<Vec<_>>(),
                    "several services share this upstream, so the forward proxy intercepts it for none; name it in one service's intercept list"
                ),
            }
        }
        let mut allowed: Vec<String> = by_authority.keys().cloned().collect();
        allowed.sort();
        Self {
            by_authority,
            allowed,
        }
    }

    /// The service for `host:port` (compared lower-case).
    pub fn lookup(&self, host: &str, port: u16) -> Option<Arc<str>> {
        self.by_authority
            .get(&format!("{}:{port}", host.to_ascii_lowercase()))
            .cloned()
    }

    /// Every intercepted authority, sorted.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// The host names (no ports), for the generated CA's name constraints.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .allowed
            .iter()
            .filter_map(|a| {
                a.rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            })
            .collect();
        hosts.dedup();
        hosts
    }
}

/// Why a forward-proxy request was refused before reaching the stack; the metric's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// CONNECT or absolute-form for an authority no service names.
    NotAllowed,
    /// CONNECT without a `host:port` target.
    BadTarget,
    /// An origin-form request (`GET /path`): that is the plain listener's job.
    NotProxyRequest,
    /// TLS inside the tunnel named another host (SNI).
    SniMismatch,
    /// The TLS handshake inside the tunnel failed otherwise.
    Handshake,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::BadTarget => "bad_target",
            Refusal::NotProxyRequest => "not_proxy_request",
            Refusal::SniMismatch => "sni_mismatch",
            Refusal::Handshake => "tls_handshake",
        }
    }
}

/// Everything a forward-proxy connection needs, shared by all of them.
pub struct ForwardProxy {
    pub ca: Arc<ca::Authority>,
    pub intercepts: Arc<Intercepts>,
    pub metrics: Metrics,
}

impl ForwardProxy {
    fn refuse(&self, why: Refusal) {
        self.metrics
            .connect_refusals
            .get_or_create(&ReasonLabel {
                reason: why.reason(),
            })
            .inc();
    }
}

/// Serves the forward proxy on `listener` until `shutdown`, then drains like
/// [`crate::server::serve`]: no new connections, every connection and tunnel asked to close
/// once its in-flight requests are answered, up to `grace`. Returns whether all finished.
///
/// The plain listener's serve loop, HTTP/1 only (what proxy clients speak for CONNECT and
/// absolute-form): the same connection cap (a tunnel counts as its connection until it
/// closes), time limits, and a connection served a burst at a time, holding no hyper
/// buffers while idle. An accepted CONNECT takes its connection over once its `200` is
/// written ([`crate::server::Takeover`]) and the tunnel runs on it.
pub async fn serve<S>(
    listener: TcpListener,
    fp: ForwardProxy,
    stack: S,
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> bool
where
    S: HttpService,
{
    let outer = Outer {
        fp: Arc::new(fp),
        stack,
        inner: Arc::new(tunnel::builder(cfg)),
        cfg: Arc::new(cfg.clone()),
    };
    let (_never, draining) = watch::channel(false);
    let drain = crate::server::Drain {
        draining,
        stop: shutdown,
        grace,
    };
    let protocols = Protocols {
        h2: false,
        takeover: true,
        name: "forward proxy: ",
    };
    crate::server::serve_speaking(listener.into(), outer, cfg, drain, protocols).await
}

/// The forward listener's request handler: CONNECT opens a tunnel, absolute-form goes to the
/// stack, anything else is refused.
struct Outer<S> {
    fp: Arc<ForwardProxy>,
    stack: S,
    inner: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    cfg: Arc<ServerConfig>,
}

impl<S: Clone> Clone for Outer<S> {
    fn clone(&self) -> Self {
        Self {
            fp: self.fp.clone(),
            stack: self.stack.clone(),
            inner: self.inner.clone(),
            cfg: self.cfg.clone(),
        }
    }
}

type OuterFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S: HttpService> tower::Service<Request<Incoming>> for Outer<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = OuterFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> OuterFuture {
        if req.method() == Method::CONNECT {
            return Box::pin(std::future::ready(Ok(self.connect(req))));
        }
        let Some(authority) = req.uri().authority().cloned() else {
            return self.refused(
                Refusal::NotProxyRequest,
                &req,
                StatusCode::BAD_REQUEST,
                "not_proxy_request",
                "this is the forward-proxy listener: send CONNECT host:443 or an absolute-form request (use it as HTTPS_PROXY); plain requests go to server.listen",
            );
        };
        if req.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
            return self.refused(
                Refusal::NotProxyRequest,
                &req,
                StatusCode::BAD_REQUEST,
                "not_proxy_request",
                "absolute-form requests must be http://; for https use CONNECT (HTTPS_PROXY)",
            );
        }
        let port = authority.port_u16();
        // `http://host/` with no port: the host's http authority, else its https one.
        let target = match port {
            Some(p) => self.fp.intercepts.lookup(authority.host(), p),
            None => self
                .fp
                .intercepts
                .lookup(authority.host(), 80)
                .or_else(|| self.fp.intercepts.lookup(authority.host(), 443)),
        };
        let Some(target) = target else {
            let msg = self.not_allowed_message(authority.as_str());
            return self.refused(
                Refusal::NotAllowed,
                &req,
                StatusCode::FORBIDDEN,
                "authority_not_allowed",
                &msg,
            );
        };
        // The absolute URI is the target (RFC 9112 3.2.2): Host is not compared.
        req.extensions_mut().insert(Intercepted {
            service: target,
            authority: None,
        });
        req.extensions_mut().insert(Mode::FORWARD);
        let fut = self.stack.clone().oneshot(req);
        Box::pin(fut)
    }
}

impl<S: HttpService> Outer<S> {
    fn not_allowed_message(&self, authority: &str) -> String {
        format!(
            "{authority} is not the public authority of a configured service; the forward proxy intercepts only {} (add one to services.NAME.intercept); nothing was connected",
            self.fp.intercepts.allowed().join(", ")
        )
    }

    fn refused(
        &self,
        why: Refusal,
        req: &Request<Incoming>,
        status: StatusCode,
        code: &'static str,
        message: &str,
    ) -> OuterFuture {
        self.fp.refuse(why);
        log_refusal(req, status, code);
        Box::pin(std::future::ready(Ok(json_error(
            status, code, message, None,
        ))))
    }

    /// Accepts or refuses a CONNECT; an accepted one is answered 200 and continues in
    /// [`tunnel::run`] once hyper hands over the connection.
    fn connect(&self, mut req: Request<Incoming>) -> Response<Body> {
        let Some(authority) = req.uri().authority().cloned() else {
            self.fp.refuse(Refusal::BadTarget);
            log_refusal(&req, StatusCode::BAD_REQUEST, "bad_connect_target");
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_connect_target",
                "CONNECT needs host:port",
                None,
            );
        };
        let target = authority
            .port_u16()
            .and_then(|p| self.fp.intercepts.lookup(authority.host(), p));
        let Some(target) = target else {
            self.fp.refuse(Refusal::NotAllowed);
            log_refusal(&req, StatusCode::FORBIDDEN, "connect_not_allowed");
            let body = serde_json::json!({
                "code": "connect_not_allowed",
                "message": self.not_allowed_message(authority.as_str()),
                "allowed": self.fp.intercepts.allowed(),
            });
            let mut resp = json_error(StatusCode::FORBIDDEN, "connect_not_allowed", "", None);
            *resp.body_mut() = crate::body::full(body.to_string());
            return resp;
        };
        let tunnel = tunnel::Tunnel {
            // Copied: the parsed one is a view into hyper's read buffer (8-16 KiB), which the
            // tunnel would otherwise keep for its whole life.
            authority: authority.as_str().parse().unwrap_or(authority),
            target,
            fp: self.fp.clone(),
            stack: self.stack.clone(),
            builder: self.inner.clone(),
            idle: self.cfg.idle_timeout,
            handshake_timeout: self.cfg.header_read_timeout,
        };
        // The listener hands the connection over once the 200 is written; the tunnel then
        // runs in the connection's task, under its place in the cap.
        let Some(takeover) = req.extensions_mut().remove::<Takeover>() else {
            tracing::warn!(
                "forward proxy: CONNECT on a listener that cannot hand over connections"
            );
            return json_error(
                StatusCode::BAD_REQUEST,
                "not_proxy_request",
                "CONNECT is not served on this listener",
                None,
            );
        };
        takeover.set(Box::new(move |io, closing| {
            Box::pin(tunnel.run(io, closing))
        }));
        Response::new(crate::body::empty())
    }
}

fn log_refusal(req: &Request<Incoming>, status: StatusCode, code: &'static str) {
    tracing::info!(
        target: "access",
        mode = "forward",
        method = %req.method(),
        authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("-"),
        status = status.as_u16(),
        error_code = code,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;

    fn svc(name: &str, upstream: &str, intercept: &[&str]) -> ServiceConfig {
        ServiceConfig {
            upstream: Upstream::parse(upstream).unwrap(),
            intercept: intercept.iter().map(|a| a.parse().unwrap()).collect(),
            ..crate::layers::test_support::service(name)
        }
    }

    #[test]
    fn upstream_authorities_and_intercept_lists_name_their_service() {
        let i = Intercepts::new(&[
            svc(
                "virtualserver",
                "https://VirtualServer.kr-west1.e.samsungsdscloud.com",
                &[],
            ),
            svc(
                "iam",
                "http://127.0.0.1:9000",
                &["iam.e.samsungsdscloud.com:443"],
            ),
            // Shares the loopback upstream: that authority then names neither.
            svc(
                "vpc",
                "http://127.0.0.1:9000",
                &["vpc.kr-west1.e.samsungsdscloud.com:443"],
            ),
        ]);
        assert_eq!(
            i.lookup("virtualserver.kr-west1.e.samsungsdscloud.com", 443)
                .as_deref(),
            Some("virtualserver")
        );
        assert_eq!(
            i.lookup("IAM.e.samsungsdscloud.com", 443).as_deref(),
            Some("iam")
        );
        assert_eq!(
            i.lookup("vpc.kr-west1.e.samsungsdscloud.com", 443)
                .as_deref(),
            Some("vpc")
        );
        assert_eq!(i.lookup("127.0.0.1", 9000), None);
        assert_eq!(
            i.lookup("virtualserver.kr-west1.e.samsungsdscloud.com", 8443),
            None
        );
        assert_eq!(i.lookup("example.com", 443), None);
        assert_eq!(
            i.allowed(),
            [
                "iam.e.samsungsdscloud.com:443",
                "virtualserver.kr-west1.e.samsungsdscloud.com:443",
                "vpc.kr-west1.e.samsungsdscloud.com:443"
            ]
        );
        assert_eq!(i.hosts().len(), 3);
    }
}
