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
use std::marker::PhantomData;
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
    type Future = RetryFuture<S::Future, Again<S, B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: RoutedRequest<ReqBody<B>>) -> Self::Future {
        let target = routed.target().clone();
        let policy = &target.retry;
        policy.budget.deposit();
        let req = routed.request();
        if !policy.may_retry(req.method(), req.uri().path()) {
            return RetryFuture::Once {
                call: self.inner.call(routed),
            };
        }
        // Only a body that can be sent again: empty, or bytes a layer already holds.
        let replay = match req.body() {
            Either::Right(full) => full.clone(),
            Either::Left(b) if b.is_end_stream() => Full::new(Bytes::new()),
            Either::Left(_) => {
                return RetryFuture::Once {
                    call: self.inner.call(routed),
                }
            }
        };
        let template = copy_head(req, ());
        let deadline = Instant::now() + target.config.timeout;
        // The target without the client's body: each retried attempt gets a fresh copy of the
        // request; the first one is the request itself (one copy of the headers, not two).
        let shell = routed.with_request(Request::new(()));
        let first = routed.map_request(|r| r.map(|_| ReqBody::<B>::Right(replay.clone())));
        // The clone that was made ready is the one to call (tower's convention); the first
        // attempt goes to it, and retries to the same service, made ready again.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(first);
        RetryFuture::First {
            call,
            again: Some(Again {
                inner,
                template,
                shell,
                replay,
                deadline,
                metrics: self.metrics.clone(),
                body: PhantomData,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The first attempt inline (no box: most attempts succeed); only a retryable failure
    /// moves what a retry needs into the boxed retry loop.
    #[project = RetryProj]
    pub enum RetryFuture<F, A> {
        /// Not retryable: the inner future as it is.
        Once { #[pin] call: F },
        /// The first attempt of a retryable request; `again` is taken when it fails.
        First { #[pin] call: F, again: Option<A> },
        /// After a retryable failure.
        Retrying { retrying: Retrying },
    }
}

impl<F, A> Future for RetryFuture<F, A>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
    A: Resume,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let retrying = match self.as_mut().project() {
                RetryProj::Once { call } => return call.poll(cx),
                RetryProj::First { call, again } => {
                    let result = std::task::ready!(call.poll(cx));
                    if retryable(&result).is_none() {
                        return Poll::Ready(result);
                    }
                    match again.take() {
                        Some(again) => again.resume(result),
                        None => return Poll::Ready(result),
                    }
                }
                RetryProj::Retrying { retrying } => return retrying.as_mut().poll(cx),
            };
            self.set(RetryFuture::Retrying { retrying });
        }
    }
}

/// What a retry needs, kept beside the first attempt.
pub struct Again<S, B> {
    inner: S,
    /// The request as the client sent it, without its body.
    template: Request<()>,
    shell: RoutedRequest<()>,
    replay: Full<Bytes>,
    /// The service's `timeout` from the first attempt.
    deadline: Instant,
    metrics: Metrics,
    /// The client's body type, which retried attempts are built with.
    body: PhantomData<fn() -> B>,
}

/// Turns the first attempt's retryable failure into the retry loop.
pub trait Resume {
    fn resume(self, first: Result<Response<Body>, ProxyError>) -> Retrying;
}

impl<S, B> Resume for Again<S, B>
where
    S: Service<RoutedRequest<ReqBody<B>>, Response = Response<Body>, Error = ProxyError>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    fn resume(self, first: Result<Response<Body>, ProxyError>) -> Retrying {
        Box::pin(self.retry(first))
    }
}

impl<S, B> Again<S, B>
where
    S: Service<RoutedRequest<ReqBody<B>>, Response = Response<Body>, Error = ProxyError>,
    B: http_body::Body,
{
    /// Attempts after the first (whose `result` failed) until one is not retryable, or the
    /// attempts, the deadline or the budget run out.
    async fn retry(
        mut self,
        mut result: Result<Response<Body>, ProxyError>,
    ) -> Result<Response<Body>, ProxyError> {
        let target = self.shell.target().clone();
        let policy = &target.retry;
        let service = target.label;
        let timeout = target.config.timeout;
        let metrics = &self.metrics;
        let count = |outcome: &'static str| {
            metrics
                .retries
                .get_or_create(&RetryLabels { service, outcome })
                .inc();
        };
        let mut attempt = 1;
        loop {
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
            if Instant::now() + pause >= self.deadline {
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
                method = %self.template.method(),
                path = self.template.uri().path(),
                attempt,
                reason,
                pause_ms = pause.as_secs_f64() * 1e3,
                "upstream attempt failed; retrying with a fresh signature"
            );
            // The failed answer's body is dropped unread.
            drop(result);
            tokio::time::sleep(pause).await;
            attempt += 1;
            let next = self.shell.with_request(copy_head(
                &self.template,
                ReqBody::<B>::Right(self.replay.clone()),
            ));
            let call = self.inner.ready().await?.call(next);
            // A retried attempt must not run past the request's deadline.
            let left = self.deadline.saturating_duration_since(Instant::now());
            result = match tokio::time::timeout(left, call).await {
                Ok(r) => r,
                Err(_) => Err(UpstreamError::Timeout {
                    service: service.to_owned(),
                    upstream: target.config.upstream.base.clone(),
                    timeout,
                }
                .into()),
            };
        }
    }
}

/// A request with `from`'s method, URI, version, headers and extensions, and `body`.
fn copy_head<T, B>(from: &Request<T>, body: B) -> Request<B> {
    let mut r = Request::new(body);
    *r.method_mut() = from.method().clone();
    *r.uri_mut() = from.uri().clone();
    *r.version_mut() = from.version();
    *r.headers_mut() = from.headers().clone();
    *r.extensions_mut() = from.extensions().clone();
    r
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
