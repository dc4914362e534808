//! Forwarding: one pooled keep-alive client per upstream (HTTP/1.1, or HTTP/2 when TLS ALPN
//! agrees), bodies streamed both ways, and the only place upstream failures become errors.
//!
//! Guarantees: a client that drops mid-body makes the request body fail, which aborts the
//! upstream request (the upstream never sees a complete, truncated body); no response headers
//! within the service's `timeout`: [`UpstreamError::Timeout`] (504); cannot connect:
//! [`UpstreamError::Unreachable`] (502).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::Either;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use crate::body::Body;
use crate::config::ServiceConfig;
use crate::error::{ProxyError, UpstreamError};
use crate::route::{Routed, Target};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// How long the upstream took to send response headers; in response extensions for the log.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLatency(pub Duration);

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
}

/// Builds the upstream client for one service.
pub fn client_for(svc: &ServiceConfig) -> Result<HttpClient, TlsSetupError> {
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
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
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
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

/// The innermost service: sends the (signed) request to its routed upstream.
#[derive(Clone)]
pub struct Forward {
    clients: Arc<[HttpClient]>,
}

impl Forward {
    /// One client per target, in routing-table order.
    pub fn new(targets: &[Arc<Target>]) -> Result<Self, TlsSetupError> {
        let clients = targets
            .iter()
            .map(|t| client_for(&t.config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            clients: clients.into(),
        })
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(Routed { target }) = req.extensions().get::<Routed>().cloned() else {
            // Route always runs first; without it there is nowhere safe to send the request.
            return Box::pin(async { Err(ProxyError::AbsoluteForm) });
        };
        let client = self.clients[target.index].clone();
        Box::pin(async move {
            let started = Instant::now();
            let timeout = target.config.timeout;
            let result = tokio::time::timeout(timeout, client.request(req)).await;
            let upstream = || target.config.upstream.base.clone();
            let service = || target.config.name.clone();
            match result {
                Ok(Ok(resp)) => {
                    let mut resp = resp.map(Either::Left);
                    resp.extensions_mut()
                        .insert(UpstreamLatency(started.elapsed()));
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
                    timeout,
                }
                .into()),
            }
        })
    }
}
