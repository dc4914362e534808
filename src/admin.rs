//! The admin listener's service: liveness, readiness and metrics, apart from the data plane
//! so a busy or draining data plane never hides them.
//!
//! Guarantees: every answer is made in memory without awaiting anything (no upstream, no
//! lock held across an await), so `/healthz` answers whenever the admin listener accepts;
//! `/readyz` turns 503 as soon as draining starts. Endpoints are one `match` on the path:
//! a new one is one arm.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Connections the admin listener serves at once: probes and a scraper need a handful; the
/// data plane's descriptor budget reserves room for these.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// Liveness and readiness, shared by the admin listener and shutdown.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}

/// The admin endpoints: `/healthz`, `/readyz`, `/metrics`, `POST /quitquitquit` when
/// `server.enable_quit` is set, and `/ca.pem` (the forward proxy's CA certificate) when
/// `[forward_proxy] listen` is.
#[derive(Clone)]
pub(crate) struct Admin {
    pub health: Arc<Health>,
    pub metrics: Metrics,
    pub credentials: crate::credentials::CredentialStore,
    /// Starts the graceful drain (`POST /quitquitquit`); `None` unless `server.enable_quit`.
    pub quit: Option<watch::Sender<bool>>,
    /// The forward proxy's CA certificate (PEM), served at `/ca.pem` when that mode is on.
    pub ca_pem: Option<Arc<str>>,
}

impl Admin {
    pub(crate) fn handle(&self, req: &Request<Incoming>) -> Response<crate::body::Body> {
        let text = |status: StatusCode, body: String, ctype: &'static str| {
            let mut r = Response::new(http_body_util::Either::Right(Full::new(Bytes::from(body))));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            r
        };
        if let (Some(quit), "/quitquitquit") = (&self.quit, req.uri().path()) {
            if req.method() != Method::POST {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "POST only\n".into(),
                    "text/plain",
                );
            }
            // Readiness turns 503 at once; the data plane drains as on SIGTERM.
            self.health.set_draining();
            let _ = quit.send(true);
            tracing::info!("POST /quitquitquit: draining in-flight requests");
            return text(StatusCode::OK, "draining\n".into(), "text/plain");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET only\n".into(),
                "text/plain",
            );
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
            "/readyz" if self.health.is_ready() => {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready\n".into(),
                "text/plain",
            ),
            "/metrics" => text(
                StatusCode::OK,
                {
                    let loaded = self.credentials.current().loaded_at;
                    let age = loaded.elapsed().unwrap_or_default().as_secs_f64();
                    self.metrics.key_age_seconds.set(age);
                    self.metrics.encode()
                },
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            "/ca.pem" if self.ca_pem.is_some() => text(
                StatusCode::OK,
                self.ca_pem.as_deref().unwrap_or_default().to_owned(),
                "application/x-pem-file",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "try /healthz, /readyz or /metrics\n".into(),
                "text/plain",
            ),
        }
    }
}

impl tower::Service<Request<Incoming>> for Admin {
    type Response = Response<crate::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(self.handle(&req)))
    }
}
