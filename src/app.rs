//! The request path, composed in one place. Read top to bottom: the order a request meets the
//! layers.

use std::convert::Infallible;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};

use crate::body::Body;
use crate::credentials::CredentialStore;
use crate::error::RescueLayer;
use crate::forward::{Egress, Forward, TlsSetupError};
use crate::layers::allowlist::OperationAllowlistLayer;
use crate::layers::hygiene::HeaderHygieneLayer;
use crate::layers::image_import::ImageImportLayer;
use crate::layers::limit::ConcurrencyLimitLayer;
use crate::layers::sign::SignLayer;
use crate::layers::trace::TraceLayer;
use crate::layers::version::VersionPinLayer;
use crate::metrics::Metrics;
use crate::route::{RouteLayer, Routes};

/// What the data plane needs, built once at start.
#[derive(Clone, Debug)]
pub struct ProxyParts {
    pub routes: Routes,
    pub credentials: CredentialStore,
    pub metrics: Metrics,
    pub max_concurrent_requests: usize,
    /// Per-service operation allowlists (`services.NAME.allow`), parsed at start.
    pub allowlist: OperationAllowlistLayer,
    /// Image import URL checks, with the account id and body bound from config.
    pub image_import: ImageImportLayer,
    /// Egress proxy settings, read once at start.
    pub egress: Egress,
}

/// The data-plane service: one per process. hyper-util clones it for every request, so every
/// layer keeps its state behind an `Arc` and the clone is a handful of reference counts.
pub fn proxy_service(
    parts: ProxyParts,
) -> Result<
    impl Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + 'static,
    TlsSetupError,
> {
    let forward = Forward::new(parts.routes.targets(), &parts.egress)?;
    let svc = ServiceBuilder::new()
        // Plain request bodies stream through; layers that inspect a body may swap in bytes.
        .map_request(|req: Request<Incoming>| req.map(Either::Left))
        // Outermost: request id and the one log line and metrics for every answer, the
        // proxy's own rejections included.
        .layer(TraceLayer::new(parts.metrics.clone()))
        // Errors of the limit and routing layers become JSON responses here.
        .layer(RescueLayer)
        // Refuse excess load before doing any work for it.
        .layer(ConcurrencyLimitLayer::new(parts.max_concurrent_requests))
        // Choose the service and rewrite the URI to the upstream's; CONNECT and absolute-form
        // targets end here, so a client never picks where a signed request goes.
        .layer(RouteLayer::new(parts.routes))
        // Errors below routing become responses under it, so they still name their service.
        .layer(RescueLayer)
        // Drop hop-by-hop and client-sent credentials before any policy looks at headers.
        .layer(HeaderHygieneLayer)
        // Inject or enforce the pinned Scp-Api-Version.
        .layer(VersionPinLayer)
        // Refuse operations outside the service's allowlist before any body is read for them.
        .layer(parts.allowlist)
        // Read and check image-import bodies last, so only allowed requests are buffered and
        // the bytes checked are the bytes signed and sent.
        .layer(parts.image_import)
        // Last before forwarding: sign exactly what goes out, with a fresh timestamp.
        .layer(SignLayer::new(parts.credentials))
        .service(forward);
    Ok(svc)
}
