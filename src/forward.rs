//! Forwarding: one pooled keep-alive client per upstream (HTTP/1.1, or HTTP/2 when TLS ALPN
//! agrees), bodies streamed both ways, and the only place upstream failures become errors.
//!
//! Guarantees: a client that drops mid-body makes the request body fail, which aborts the
//! upstream request (the upstream never sees a complete, truncated body); that, and a
//! malformed client body, is the client's failure ([`ProxyError::ClientAborted`],
//! [`ProxyError::ClientBodyInvalid`], 400), never an upstream error; no response headers
//! within the service's `timeout`: [`UpstreamError::Timeout`] (504); cannot connect:
//! [`UpstreamError::Unreachable`] (502).
//!
//! Egress: an upstream reached through a corporate proxy ([`Egress`], read once at start from
//! `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`) gets an HTTP CONNECT tunnel, and TLS to the
//! upstream runs inside it, so the signature and TLS stay end to end. Loopback upstreams never
//! use the proxy. A proxy that is unreachable or refuses the CONNECT is a connect failure
//! (502 `upstream_unreachable`) whose message names the proxy.
//!
//! Layout: `egress` decides direct or tunnelled per service, `connect` opens that transport,
//! `client` puts TLS on top, `pool` keeps its connections, and this module is the service.

mod affinity;
mod client;
mod connect;
mod egress;
mod pool;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::Either;
use tower::Service;

pub use self::affinity::{drive, release_bound, Driven};
pub use self::client::{client_for, HttpClient, TlsSetupError};
pub use self::connect::{TunnelFailed, UpstreamConnector};
pub use self::egress::{DirectReason, Egress, EgressRoute};
pub use self::pool::{ClientError, ResponseFuture, UpstreamClient};
use crate::body::{Body, BodyStalled, DownloadLimit, NoTrailers, UploadEnded};
use crate::config::ServiceConfig;
use crate::error::{ClientFailure, ProxyError, UpstreamError};
use crate::route::{Destination, Routed};

/// How long the upstream took to send response headers; in response extensions for the log.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLatency(pub Duration);

/// The innermost service: sends the (signed) request to its routed upstream, with the
/// target's own pooled client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forward;

/// What forwarding needs of a routed target (implemented by [`crate::target::Target`]; a
/// trait so this module does not depend on the module that builds targets from it).
pub trait Endpoint: Destination {
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
        let svc = target.service();
        let (parts, body) = routed.into_request().into_parts();
        let (body, upload_ended) = NoTrailers::limited(body, svc.body_idle_timeout, target.label());
        let response = target
            .client()
            .send(Request::from_parts(parts, body), started);
        ForwardFuture {
            response,
            upload_ended,
            deadline: None,
            target,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// The upstream's response headers within the service's timeout, counted from the end of
    /// the request body (a slow upload that keeps moving is not cut; one that stops fails by
    /// `body_idle_timeout`); no box.
    pub struct ForwardFuture<T> {
        #[pin]
        response: ResponseFuture<NoTrailers<Body>>,
        upload_ended: UploadEnded,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        target: Arc<T>,
        started: Instant,
    }
}

impl<T: Endpoint> Future for ForwardFuture<T> {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let svc = this.target.service();
        let result = match this.response.poll(cx) {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => {
                if this.deadline.is_none() && this.upload_ended.poll_ended(cx).is_ready() {
                    this.deadline.set(Some(tokio::time::sleep(svc.timeout)));
                }
                match this.deadline.as_mut().as_pin_mut().map(|d| d.poll(cx)) {
                    Some(Poll::Ready(())) => Err(()),
                    _ => return Poll::Pending,
                }
            }
        };
        let upstream = || svc.upstream.base.clone();
        let service = || svc.name.clone();
        Poll::Ready(match result {
            Ok(Ok(resp)) => {
                let mut resp = resp.map(Either::Left);
                resp.extensions_mut()
                    .insert(UpstreamLatency(this.started.elapsed()));
                // The listener bounds the upstream's body by this (server.rs).
                resp.extensions_mut().insert(DownloadLimit {
                    limit: svc.body_idle_timeout,
                    service: this.target.label(),
                });
                Ok(resp)
            }
            Ok(Err(source)) if BodyStalled::find(&source).is_some() => {
                Err(ProxyError::ClientBodyStalled {
                    service: service(),
                    timeout: svc.body_idle_timeout,
                })
            }
            Ok(Err(source)) => match client_body_failure(&source) {
                Some(ClientFailure::Aborted) => Err(ProxyError::ClientAborted {
                    service: service(),
                    source,
                }),
                Some(ClientFailure::Invalid) => Err(ProxyError::ClientBodyInvalid {
                    service: service(),
                    source,
                }),
                None => Err(upstream_failure(source, service(), upstream())),
            },
            Err(()) => Err(UpstreamError::Timeout {
                service: service(),
                upstream: upstream(),
                timeout: svc.timeout,
            }
            .into()),
        })
    }
}

fn upstream_failure(source: ClientError, service: String, upstream: String) -> ProxyError {
    if source.is_connect() {
        UpstreamError::Unreachable {
            service,
            upstream,
            source,
        }
        .into()
    } else {
        UpstreamError::Failed {
            service,
            upstream,
            source,
        }
        .into()
    }
}

/// Whether the upstream request failed because the request body did. hyper's client reports
/// a failing request body as a user error whose source is that body's error; the body is the
/// client's stream (a stalled one is [`BodyStalled`], matched before this), so its error is
/// the client's doing. Anything else (connect, write, read, protocol) is the upstream's.
fn client_body_failure(err: &(dyn std::error::Error + 'static)) -> Option<ClientFailure> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                let body_error = std::error::Error::source(h)?;
                return Some(ClientFailure::of(body_error));
            }
        }
        cur = e.source();
    }
    None
}
