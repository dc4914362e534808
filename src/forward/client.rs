//! One upstream client per service: TLS roots (webpki plus the service's `ca_file`), the
//! connector the egress plan chose, and the keep-alive pool ([`super::pool`]).
//!
//! Guarantees: built once per service at start, so a bad `ca_file` or an unusable proxy
//! setting fails start-up naming the service, never a request.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::connect::{Connect, UpstreamConnector};
use super::egress::{DirectReason, Egress, Plan};
use super::pool::UpstreamClient;
use crate::body::{Body, NoTrailers};
use crate::config::ServiceConfig;

/// The most an HTTP/1 upstream connection buffers (hyper's default is ~400 KiB). A download's
/// frames are slices of this read buffer, so it bounds what a large download holds. Measured
/// with scripts/transfer.py (1 GiB downloads): VmHWM grows 0.5-0.7 MiB instead of 2.1-2.4 MiB
/// (TLS: 0.9-1.1 instead of 3.1-3.3), at the same CPU per GiB; 64 KiB cost up to twice the
/// CPU. It also caps an upstream's response head, far above what SCP sends.
const UPSTREAM_READ_BUF: usize = 128 * 1024;

/// How long an idle upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub type HttpClient = UpstreamClient<NoTrailers<Body>>;

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
    let mut h1 = hyper::client::conn::http1::Builder::new();
    h1.max_buf_size(UPSTREAM_READ_BUF);
    UpstreamClient::new(
        https,
        svc.upstream.scheme.clone(),
        svc.upstream.authority.clone(),
        h1,
        svc.max_idle_connections,
        IDLE_TIMEOUT,
    )
    .map_err(|message| TlsSetupError::Egress {
        service: svc.name.clone(),
        upstream: svc.upstream.base.clone(),
        message,
    })
}
