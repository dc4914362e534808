//! Retries, re-signed: a failed attempt is sent again with a fresh timestamp and signature.
//!
//! Guarantees: sits above signing, so every attempt is signed anew (an SCP signature covers
//! the timestamp, and a replayed one would be refused); only GET, HEAD and OPTIONS are retried
//! unless the service lists the operation in `retry.operations`; only a request whose body is
//! empty or already held in memory (a checked import body) is retried, never a streamed one;
//! retried on a connect failure, 502, 503, 504, and 417 with an HTML body (SCP's edge under
//! bursts); at most `retry.max_attempts` attempts in all; a jittered exponential pause between
//! them; a retry is never started when its pause would end past the request's deadline (the
//! service's `timeout` from the first attempt), and a retried attempt is cut at that deadline;
//! retries draw on a per-service budget (a reserve of [`RESERVE`] retries, refilled by
//! `budget_percent` of the service's requests, holding at most [`CAP`]), so a failing upstream
//! is not hammered. Every decision after a retryable failure is counted in
//! `scp_auth_proxy_retries_total{service, outcome}`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use tower::{Layer, Service, ServiceExt};

use super::ReqBody;
use crate::body::Body;
use crate::error::{ProxyError, UpstreamError};
use crate::metrics::{Metrics, RetryLabels};
pub use crate::target::retry::{CAP, RESERVE};
use crate::target::RoutedRequest;

/// Why an attempt's outcome is worth another attempt, or `None`.
pub fn retryable(result: &Result<Response<Body>, ProxyError>) -> Option<&'static str> {
    match result {
        Ok(r) => match r.status() {
            StatusCode::BAD_GATEWAY => Some("502"),
            StatusCode::SERVICE_UNAVAILABLE => Some("503"),
            StatusCode::GATEWAY_TIMEOUT => Some("504"),
            // SCP's WAF answers bursts with an HTML 417; an API's own 417 is JSON.
            StatusCode::EXPECTATION_FAILED
                if r.headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim_start().starts_with("text/html")) =>
            {
                Some("417_html")
            }
            _ => None,
        },
        Err(ProxyError::Upstream(UpstreamError::Unreachable { .. })) => Some("connect"),
        Err(_) => None,
    }
}

#[derive(Clone, Debug)]
pub struct RetryLayer {
    metrics: Metrics,
}

impl RetryLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Retry<S> {
    metrics: Metrics,
    inner: S,
}

type Retrying = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

impl<S, B> Service<RoutedRequest<ReqBody<B>>> for Retry<S>
where
    S: Service<RoutedRequest<ReqBody<B>>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    /// No box unless the request may be retried.
    type Future = futures_util::future::Either<S::Future, Retrying>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: RoutedRequest<ReqBody<B>>) -> Self::Future {
        let target = routed.target().clone();
        let policy = &target.retry;
        policy.budget.deposit();
        let req = routed.request();
        if !policy.may_retry(req.method(), req.uri().path()) {
            return futures_util::future::Either::Left(self.inner.call(routed));
        }
        // Only a body that can be sent again: empty, or bytes a layer already holds.
        let replay = match req.body() {
            Either::Right(full) => full.clone(),
            Either::Left(b) if b.is_end_stream() => Full::new(Bytes::new()),
            Either::Left(_) => return futures_util::future::Either::Left(self.inner.call(routed)),
        };
        let mut template = Request::new(());
        *template.method_mut() = req.method().clone();
        *template.uri_mut() = req.uri().clone();
        *template.version_mut() = req.version();
        *template.headers_mut() = req.headers().clone();
        *template.extensions_mut() = req.extensions().clone();
        // The target without the client's body: each retried attempt gets a fresh copy of the
        // request; the first one is the request itself (one copy of the headers, not two).
        let shell = routed.with_request(Request::new(()));
        let first = routed.map_request(|r| r.map(|_| ReqBody::<B>::Right(replay.clone())));
        // The clone that was made ready is the one to call (tower's convention).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        futures_util::future::Either::Right(Box::pin(async move {
            let policy = &shell.target().retry;
            let service = shell.target().label;
            let timeout = shell.target().config.timeout;
            let deadline = Instant::now() + timeout;
            let count = |outcome: &'static str| {
                metrics
                    .retries
                    .get_or_create(&RetryLabels { service, outcome })
                    .inc();
            };
            let again = |t: &Request<()>| {
                let mut r = Request::new(ReqBody::<B>::Right(replay.clone()));
                *r.method_mut() = t.method().clone();
                *r.uri_mut() = t.uri().clone();
                *r.version_mut() = t.version();
                *r.headers_mut() = t.headers().clone();
                *r.extensions_mut() = t.extensions().clone();
                shell.with_request(r)
            };
            let mut next = first;
            let mut attempt = 1;
            loop {
                let call = inner.ready().await?.call(next);
                let result = if attempt == 1 {
                    call.await
                } else {
                    // A retried attempt must not run past the request's deadline.
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, call).await {
                        Ok(r) => r,
                        Err(_) => Err(UpstreamError::Timeout {
                            service: service.to_owned(),
                            upstream: shell.target().config.upstream.base.clone(),
                            timeout,
                        }
                        .into()),
                    }
                };
                let Some(reason) = retryable(&result) else {
                    if attempt > 1 {
                        count("recovered");
                    }
                    return result;
                };
                if attempt >= policy.max_attempts {
                    count("exhausted");
                    return result;
                }
                let pause = policy.pause(attempt);
                if Instant::now() + pause >= deadline {
                    count("deadline");
                    return result;
                }
                if !policy.budget.try_withdraw() {
                    count("budget");
                    tracing::debug!(service, reason, "retry budget spent: not retried");
                    return result;
                }
                count("retried");
                tracing::info!(
                    service,
                    method = %template.method(),
                    path = template.uri().path(),
                    attempt,
                    reason,
                    pause_ms = pause.as_secs_f64() * 1e3,
                    "upstream attempt failed; retrying with a fresh signature"
                );
                // The failed answer's body is dropped unread.
                drop(result);
                tokio::time::sleep(pause).await;
                attempt += 1;
                next = again(&template);
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn what_is_retryable() {
        let resp = |status: u16, ctype: &str| {
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, ctype.parse().unwrap());
            Ok(r)
        };
        assert_eq!(retryable(&resp(503, "application/json")), Some("503"));
        assert_eq!(retryable(&resp(502, "text/plain")), Some("502"));
        assert_eq!(retryable(&resp(504, "text/plain")), Some("504"));
        assert_eq!(
            retryable(&resp(417, "text/html; charset=utf-8")),
            Some("417_html")
        );
        assert_eq!(retryable(&resp(417, "application/json")), None);
        assert_eq!(retryable(&resp(500, "application/json")), None);
        assert_eq!(retryable(&resp(429, "application/json")), None);
        assert_eq!(retryable(&resp(200, "application/json")), None);
        let timeout = Err(ProxyError::Upstream(UpstreamError::Timeout {
            service: "s".into(),
            upstream: "u".into(),
            timeout: Duration::from_secs(1),
        }));
        assert_eq!(retryable(&timeout), None);
    }
}
