//! Version pin: every request carries the service's pinned `Scp-Api-Version`.
//!
//! Guarantees: a request without the header gets `<service> <pin>`; one whose trimmed value is
//! exactly that passes (normalised to it); anything else is refused with 400
//! `api_version_mismatch` and the inner service is never called, so nothing goes upstream.

use std::task::{Context, Poll};

use http::{HeaderName, Request};
use tower::{Layer, Service};

use super::{reject, Reject};
use crate::error::ProxyError;
use crate::policy::PolicyError;
use crate::route::Routed;

pub const SCP_API_VERSION: HeaderName = HeaderName::from_static("scp-api-version");

#[derive(Clone, Copy, Debug, Default)]
pub struct VersionPinLayer;

impl<S> Layer<S> for VersionPinLayer {
    type Service = VersionPin<S>;
    fn layer(&self, inner: S) -> Self::Service {
        VersionPin { inner }
    }
}

#[derive(Clone, Debug)]
pub struct VersionPin<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for VersionPin<S>
where
    S: Service<Request<B>, Error = ProxyError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Reject<S::Future, S::Response, ProxyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(routed) = req.extensions().get::<Routed>() else {
            return futures_util::future::Either::Left(self.inner.call(req));
        };
        let pinned = &routed.target.version_header;
        let mut sent = req.headers().get_all(&SCP_API_VERSION).iter();
        let verdict = match (sent.next(), sent.next()) {
            (None, _) => Ok(()),
            (Some(v), None) if v.as_bytes().trim_ascii() == pinned.as_bytes() => Ok(()),
            (Some(v), _) => Err(PolicyError::ApiVersionMismatch {
                service: routed.target.name().to_owned(),
                sent: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                pinned: String::from_utf8_lossy(pinned.as_bytes()).into_owned(),
            }),
        };
        match verdict {
            Ok(()) => {
                let pinned = pinned.clone();
                req.headers_mut().insert(SCP_API_VERSION, pinned);
                futures_util::future::Either::Left(self.inner.call(req))
            }
            Err(e) => reject(ProxyError::Policy(e)),
        }
    }
}
