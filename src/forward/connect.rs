//! The transport under TLS: a direct TCP connection, or an HTTP CONNECT tunnel through the
//! egress proxy.
//!
//! Guarantees: reaching the proxy plus the CONNECT exchange is bounded by the service's
//! `timeout`; a proxy that is unreachable, refuses the CONNECT or times out is a connect
//! failure ([`TunnelFailed`], 502 `upstream_unreachable`) whose message names the proxy and
//! the target.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the transport to an upstream: a direct TCP connection, or a CONNECT tunnel through
/// the egress proxy. TLS (for https upstreams) runs on top of either.
#[derive(Clone)]
pub struct UpstreamConnector(pub(super) Connect);

#[derive(Clone)]
pub(super) enum Connect {
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
