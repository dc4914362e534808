//! The proxy's own answers. Every error a layer raises is one of these; [`Rescue`] turns them
//! into `{"code": "...", "message": "..."}` responses in one place.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use tower::{Layer, Service};

use crate::body::Body;
use crate::policy::PolicyError;

/// The `code`s of [`ProxyError::code`], its policy and URL errors included (a unit test
/// below checks every variant's code is here, and only those).
pub const ERROR_CODES: &[&str] = &[
    "absolute_form_target",
    "asterisk_form_target",
    "connect_not_supported",
    "no_route",
    "invalid_path",
    "missing_required_header",
    "overloaded",
    "client_body_timeout",
    "client_aborted",
    "client_body_invalid",
    "misdirected_request",
    "intercepted_service_gone",
    "upstream_unreachable",
    "upstream_error",
    "upstream_timeout",
    "endpoint_catalog_too_large",
    "api_version_mismatch",
    "operation_not_allowed",
    "path_not_canonical",
    "body_too_large",
    "body_timeout",
    "body_encoded",
    "invalid_json",
    "json_not_object",
    "duplicate_key",
    "url_missing",
    "url_not_string",
    "url_too_long",
    "url_invalid_characters",
    "url_not_https",
    "url_has_userinfo",
    "url_has_query",
    "url_has_fragment",
    "url_path_not_canonical",
    "url_not_qcow2",
    "url_wrong_host",
    "url_wrong_region",
    "url_wrong_env",
    "url_wrong_account",
];

/// The `code`s the listeners answer with themselves, not through [`ProxyError`]: the plain
/// listener's `header_timeout` and `draining`, the forward proxy's refusals.
pub const LISTENER_CODES: &[&str] = &[
    "header_timeout",
    "draining",
    "connect_not_allowed",
    "bad_connect_target",
    "authority_not_allowed",
    "not_proxy_request",
];

/// Every `code` the proxy answers with: README's "Errors the proxy makes itself" lists exactly
/// these (tests/error_codes.rs).
pub fn codes() -> impl Iterator<Item = &'static str> {
    ERROR_CODES.iter().chain(LISTENER_CODES).copied()
}

/// Errors raised on a request's way through the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request target must be a path (origin form, e.g. `/v1/images`); the proxy chooses the upstream, not the client")]
    AbsoluteForm,
    #[error(
        "CONNECT is not supported: send plain HTTP requests to the proxy, which opens TLS itself"
    )]
    Connect,
    #[error("no service for path {path:?}: start the path with a configured service ({known}) or set routing.default_service")]
    NoRoute { path: String, known: String },
    #[error("path {path:?} cannot be forwarded: it does not form a valid upstream URI")]
    InvalidPath { path: String },
    #[error(
        "too many requests in flight (server.max_concurrent_requests = {limit}); retry shortly"
    )]
    Overloaded { limit: usize },
    #[error("the client sent no request body data for {} (services.{service}.body_idle_timeout)", humantime::format_duration(*.timeout))]
    ClientBodyStalled {
        service: String,
        timeout: std::time::Duration,
    },
    #[error("this tunnel was opened for {authority}, but the request's Host is {host:?}; open a tunnel (CONNECT) for that host")]
    Misdirected { host: String, authority: String },
    #[error("the forward proxy intercepts this host for services.{service}, which a reload has removed; the intercepted hosts change on restart")]
    InterceptedServiceGone { service: String },
    /// The client closed or reset its connection before its request body ended. A client
    /// failure, not the upstream's: 4xx, logged at debug, its own `code`.
    #[error("the client went away before its request body ended (service {service}); the upstream got no complete request")]
    ClientAborted {
        service: String,
        #[source]
        source: crate::forward::ClientError,
    },
    /// The client's request body broke its framing (a bad chunk size, say).
    #[error("the client's request body is malformed (service {service}); the upstream got no complete request: send a valid Content-Length or chunked body")]
    ClientBodyInvalid {
        service: String,
        #[source]
        source: crate::forward::ClientError,
    },
    /// The client's request body failed while the proxy read it itself, to check it (image
    /// import): the same client failures as [`ClientAborted`](Self::ClientAborted) and
    /// [`ClientBodyInvalid`](Self::ClientBodyInvalid), with their codes; nothing went upstream.
    #[error("{}", match .failure {
        ClientFailure::Aborted => format!("the client went away before its request body ended (service {service}); nothing was sent upstream"),
        ClientFailure::Invalid => format!("the client's request body is malformed (service {service}); nothing was sent upstream: send a valid Content-Length or chunked body"),
    })]
    ClientBodyUnread {
        service: String,
        failure: ClientFailure,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the asterisk-form target (`{method} *`) is not forwarded: send a path (e.g. `OPTIONS /v1/images`)")]
    AsteriskForm { method: String },
    #[error("the request has no {header} header (server.require_header): requests the app means to send through the proxy must carry it")]
    MissingRequiredHeader { header: String },
    #[error("too many requests in flight for service {service} (services.{service}.max_concurrent_requests = {limit}); retry shortly")]
    ServiceOverloaded { service: String, limit: usize },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Failures talking to the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to {upstream} for service {service}: {source}")]
    Unreachable {
        service: String,
        upstream: String,
        #[source]
        source: crate::forward::ClientError,
    },
    #[error("the request to {upstream} for service {service} failed: {source}")]
    Failed {
        service: String,
        upstream: String,
        #[source]
        source: crate::forward::ClientError,
    },
    #[error("{upstream} (service {service}) sent no response headers within {timeout:?} (services.{service}.timeout)")]
    Timeout {
        service: String,
        upstream: String,
        timeout: std::time::Duration,
    },
    #[error("the endpoint catalog from {upstream} (service {service}) is larger than server.max_inspected_body_bytes ({limit} bytes), so it cannot be rewritten to point at the proxy; raise that limit, or set routing.rewrite_endpoint_catalog = false to pass the catalog on as it is")]
    CatalogTooLarge {
        service: String,
        upstream: String,
        limit: usize,
    },
    #[error("reading the endpoint catalog from {upstream} (service {service}) failed")]
    CatalogRead {
        service: String,
        upstream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{upstream} (service {service}) did not finish sending the endpoint catalog within {timeout:?} (services.{service}.timeout)")]
    CatalogTimeout {
        service: String,
        upstream: String,
        timeout: std::time::Duration,
    },
}

impl From<Infallible> for ProxyError {
    fn from(e: Infallible) -> Self {
        match e {}
    }
}

/// How a client's request body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFailure {
    /// The client closed or reset the connection (or the h2 stream) before the body's end.
    Aborted,
    /// The body's framing was broken (a bad chunk size, say).
    Invalid,
}

impl ClientFailure {
    /// What a failure reading the client's body (an error from hyper's request body, as
    /// it is or wrapped) was: broken framing if an I/O error in its chain says invalid data
    /// or input (hyper's chunked decoder: `InvalidInput` for a bad size line, `InvalidData`
    /// for the rest), otherwise the client went away.
    pub fn of(err: &(dyn std::error::Error + 'static)) -> ClientFailure {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            }) {
                return ClientFailure::Invalid;
            }
            cur = e.source();
        }
        ClientFailure::Aborted
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::AbsoluteForm => StatusCode::BAD_REQUEST,
            ProxyError::AsteriskForm { .. } => StatusCode::BAD_REQUEST,
            ProxyError::MissingRequiredHeader { .. } => StatusCode::PRECONDITION_FAILED,
            ProxyError::ServiceOverloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::InvalidPath { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ClientBodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Misdirected { .. } | ProxyError::InterceptedServiceGone { .. } => {
                StatusCode::MISDIRECTED_REQUEST
            }
            // The client is gone; the status only classes the failure (4xx, not 5xx).
            ProxyError::ClientAborted { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyInvalid { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyUnread { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Policy(p) => p.status(),
            ProxyError::Upstream(
                UpstreamError::Timeout { .. } | UpstreamError::CatalogTimeout { .. },
            ) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable `code` in the JSON body (listed in the README).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::AbsoluteForm => "absolute_form_target",
            ProxyError::AsteriskForm { .. } => "asterisk_form_target",
            ProxyError::MissingRequiredHeader { .. } => "missing_required_header",
            ProxyError::ServiceOverloaded { .. } => "overloaded",
            ProxyError::Connect => "connect_not_supported",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::InvalidPath { .. } => "invalid_path",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::ClientBodyStalled { .. } => "client_body_timeout",
            ProxyError::Misdirected { .. } => "misdirected_request",
            ProxyError::InterceptedServiceGone { .. } => "intercepted_service_gone",
            ProxyError::ClientAborted { .. } => "client_aborted",
            ProxyError::ClientBodyInvalid { .. } => "client_body_invalid",
            ProxyError::ClientBodyUnread { failure, .. } => match failure {
                ClientFailure::Aborted => "client_aborted",
                ClientFailure::Invalid => "client_body_invalid",
            },
            ProxyError::Policy(p) => p.code(),
            ProxyError::Upstream(UpstreamError::Unreachable { .. }) => "upstream_unreachable",
            ProxyError::Upstream(UpstreamError::Failed { .. }) => "upstream_error",
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => "upstream_timeout",
            ProxyError::Upstream(UpstreamError::CatalogTooLarge { .. }) => {
                "endpoint_catalog_too_large"
            }
            ProxyError::Upstream(UpstreamError::CatalogRead { .. }) => "upstream_error",
            ProxyError::Upstream(UpstreamError::CatalogTimeout { .. }) => "upstream_timeout",
        }
    }

    /// The message, with the error's causes appended (they say *why* a connect failed).
    pub fn message(&self) -> String {
        let mut m = self.to_string();
        let mut src = std::error::Error::source(self);
        // `transparent` variants share their inner error's Display; skip the first source then.
        if matches!(self, ProxyError::Policy(_) | ProxyError::Upstream(_)) {
            src = src.and_then(std::error::Error::source);
        }
        while let Some(e) = src {
            let s = e.to_string();
            if !m.contains(&s) {
                m.push_str(": ");
                m.push_str(&s);
            }
            src = e.source();
        }
        m
    }

    pub fn to_response(&self) -> Response<Body> {
        json_error(
            self.status(),
            self.code(),
            &self.message(),
            self.retry_after(),
        )
    }

    fn retry_after(&self) -> Option<u32> {
        matches!(
            self,
            ProxyError::Overloaded { .. } | ProxyError::ServiceOverloaded { .. }
        )
        .then_some(1)
    }
}

/// A [`ProxyError`] with the service it happened in, when routing had chosen one: the one
/// [`Rescue`] above routing still names the service in the log and metrics.
#[derive(Debug)]
pub struct Rejection {
    pub error: ProxyError,
    pub service: Option<&'static str>,
}

impl Rejection {
    pub fn in_service(error: ProxyError, service: &'static str) -> Self {
        Self {
            error,
            service: Some(service),
        }
    }
}

impl From<ProxyError> for Rejection {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            service: None,
        }
    }
}

/// The service a response belongs to (set by routing, or here for an error raised below it),
/// in response extensions for the trace layer.
#[derive(Clone, Copy, Debug)]
pub struct ServedBy(pub &'static str);

/// The code of a proxy-made response, kept in its extensions for logs and metrics.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// A proxy-made JSON error response.
pub fn json_error(
    status: StatusCode,
    code: &'static str,
    message: &str,
    retry_after: Option<u32>,
) -> Response<Body> {
    let body = serde_json::json!({ "code": code, "message": message });
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp.extensions_mut().insert(ErrorCode(code));
    resp
}

/// Turns every [`ProxyError`] (or [`Rejection`]) into its JSON response. The one place errors
/// become HTTP.
///
/// Guarantees: the service keeps answering (`Error = Infallible`); every error becomes
/// `{"code", "message"}` with its status, and carries the routed service's name
/// ([`ServedBy`]) when there was one. The message is built from the error's
/// Display and sources only, none of which holds the secret key.
#[derive(Clone, Copy, Debug, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, Req> Service<Req> for Rescue<S>
where
    S: Service<Req, Response = Response<Body>>,
    S::Error: Into<Rejection>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        RescueFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// Resolves to the inner response, or to the JSON response for its error.
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<Rejection>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match std::task::ready!(self.project().inner.poll(cx)) {
            Ok(resp) => resp,
            Err(e) => {
                let Rejection { error: e, service } = e.into();
                let svc = service.unwrap_or("-");
                if e.status().is_server_error() {
                    tracing::warn!(code = e.code(), service = svc, error = %e.message(), "request failed");
                } else {
                    tracing::debug!(code = e.code(), service = svc, error = %e.message(), "request rejected");
                }
                let mut resp = e.to_response();
                if let Some(s) = service {
                    resp.extensions_mut().insert(ServedBy(s));
                }
                resp
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::UrlError;

    // Adding a variant breaks these matches (no `_` arm): give it a sample in `samples`.
    fn proxy_variant(e: &ProxyError) {
        match e {
            ProxyError::AbsoluteForm
            | ProxyError::Connect
            | ProxyError::NoRoute { .. }
            | ProxyError::InvalidPath { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::ClientBodyStalled { .. }
            | ProxyError::ClientAborted { .. }
            | ProxyError::ClientBodyInvalid { .. }
            | ProxyError::ClientBodyUnread { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::InterceptedServiceGone { .. }
            | ProxyError::AsteriskForm { .. }
            | ProxyError::MissingRequiredHeader { .. }
            | ProxyError::ServiceOverloaded { .. }
            | ProxyError::Policy(_)
            | ProxyError::Upstream(_) => {}
        }
    }

    fn upstream_variant(e: &UpstreamError) {
        match e {
            UpstreamError::Unreachable { .. }
            | UpstreamError::Failed { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::CatalogTooLarge { .. }
            | UpstreamError::CatalogRead { .. }
            | UpstreamError::CatalogTimeout { .. } => {}
        }
    }

    fn policy_variant(e: &PolicyError) {
        match e {
            PolicyError::ApiVersionMismatch { .. }
            | PolicyError::OperationNotAllowed { .. }
            | PolicyError::PathNotCanonical { .. }
            | PolicyError::BodyTooLarge { .. }
            | PolicyError::BodyTimeout { .. }
            | PolicyError::BodyEncoded { .. }
            | PolicyError::InvalidJson { .. }
            | PolicyError::JsonNotObject
            | PolicyError::DuplicateKey { .. }
            | PolicyError::UrlMissing { .. }
            | PolicyError::UrlNotString { .. }
            | PolicyError::ImageUrl(_) => {}
        }
    }

    fn url_variant(e: &UrlError) {
        match e {
            UrlError::TooLong { .. }
            | UrlError::InvalidCharacters { .. }
            | UrlError::NotHttps
            | UrlError::HasUserinfo
            | UrlError::HasQuery
            | UrlError::HasFragment
            | UrlError::PathNotCanonical { .. }
            | UrlError::NotQcow2 { .. }
            | UrlError::WrongHost { .. }
            | UrlError::WrongRegion { .. }
            | UrlError::WrongEnv { .. }
            | UrlError::WrongAccount { .. } => {}
        }
    }

    /// A client error, as the upstream pool makes it for a failed connect.
    async fn client_error() -> crate::forward::ClientError {
        crate::forward::ClientError::connect("nothing answers on port 0")
    }

    /// One error of every variant, the nested enums' included.
    async fn samples() -> Vec<ProxyError> {
        let s = String::new;
        let d = std::time::Duration::from_secs(1);
        let url = [
            UrlError::TooLong { len: 300 },
            UrlError::InvalidCharacters { found: s(), at: 0 },
            UrlError::NotHttps,
            UrlError::HasUserinfo,
            UrlError::HasQuery,
            UrlError::HasFragment,
            UrlError::PathNotCanonical {
                path: s(),
                reason: "",
            },
            UrlError::NotQcow2 { path: s() },
            UrlError::WrongHost {
                host: s(),
                expected: s(),
            },
            UrlError::WrongRegion {
                host: s(),
                got: s(),
                want: s(),
                expected: s(),
            },
            UrlError::WrongEnv {
                host: s(),
                got: s(),
                want: s(),
                expected: s(),
            },
            UrlError::WrongAccount {
                got: s(),
                want: s(),
            },
        ];
        let mut policy = vec![
            PolicyError::ApiVersionMismatch {
                service: s(),
                sent: s(),
                pinned: s(),
                operation: s(),
                rule: s(),
            },
            PolicyError::OperationNotAllowed {
                service: s(),
                method: s(),
                path: s(),
                rules: s(),
            },
            PolicyError::PathNotCanonical {
                service: s(),
                path: s(),
                reason: "",
            },
            PolicyError::BodyTooLarge {
                limit: 1,
                operation: "",
            },
            PolicyError::BodyTimeout {
                service: s(),
                timeout: d,
            },
            PolicyError::BodyEncoded {
                encoding: s(),
                operation: "",
            },
            PolicyError::InvalidJson { detail: s() },
            PolicyError::JsonNotObject,
            PolicyError::DuplicateKey { key: s() },
            PolicyError::UrlMissing { operation: "" },
            PolicyError::UrlNotString { kind: "" },
        ];
        url.iter().for_each(url_variant);
        policy.extend(url.into_iter().map(PolicyError::ImageUrl));
        let upstream = vec![
            UpstreamError::Unreachable {
                service: s(),
                upstream: s(),
                source: client_error().await,
            },
            UpstreamError::Failed {
                service: s(),
                upstream: s(),
                source: client_error().await,
            },
            UpstreamError::Timeout {
                service: s(),
                upstream: s(),
                timeout: d,
            },
            UpstreamError::CatalogTooLarge {
                service: s(),
                upstream: s(),
                limit: 1,
            },
            UpstreamError::CatalogRead {
                service: s(),
                upstream: s(),
                source: "cut".into(),
            },
            UpstreamError::CatalogTimeout {
                service: s(),
                upstream: s(),
                timeout: d,
            },
        ];
        policy.iter().for_each(policy_variant);
        upstream.iter().for_each(upstream_variant);
        let mut all = vec![
            ProxyError::AbsoluteForm,
            ProxyError::Connect,
            ProxyError::NoRoute {
                path: s(),
                known: s(),
            },
            ProxyError::InvalidPath { path: s() },
            ProxyError::Overloaded { limit: 1 },
            ProxyError::ClientBodyStalled {
                service: s(),
                timeout: d,
            },
            ProxyError::ClientAborted {
                service: s(),
                source: client_error().await,
            },
            ProxyError::ClientBodyInvalid {
                service: s(),
                source: client_error().await,
            },
            ProxyError::ClientBodyUnread {
                service: s(),
                failure: ClientFailure::Aborted,
                source: "gone".into(),
            },
            ProxyError::ClientBodyUnread {
                service: s(),
                failure: ClientFailure::Invalid,
                source: std::io::Error::from(std::io::ErrorKind::InvalidData).into(),
            },
            ProxyError::Misdirected {
                host: s(),
                authority: s(),
            },
            ProxyError::InterceptedServiceGone { service: s() },
            ProxyError::AsteriskForm { method: s() },
            ProxyError::MissingRequiredHeader { header: s() },
            ProxyError::ServiceOverloaded {
                service: s(),
                limit: 1,
            },
        ];
        all.extend(policy.into_iter().map(ProxyError::Policy));
        all.extend(upstream.into_iter().map(ProxyError::Upstream));
        all.iter().for_each(proxy_variant);
        all
    }

    #[tokio::test]
    async fn every_error_answers_with_a_listed_code() {
        let mut produced = BTreeSet::new();
        for e in samples().await {
            let code = e.code();
            assert!(
                ERROR_CODES.contains(&code),
                "{code} ({e:?}) is missing from ERROR_CODES"
            );
            produced.insert(code);
            // The response carries the same code.
            let resp = e.to_response();
            assert_eq!(
                resp.extensions().get::<ErrorCode>().map(|c| c.0),
                Some(code)
            );
        }
        // And no listed code is one no error has.
        assert_eq!(produced, ERROR_CODES.iter().copied().collect());
        let unique: BTreeSet<_> = codes().collect();
        assert_eq!(unique.len(), codes().count(), "a code is listed twice");
    }
}
