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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use tower::{Layer, Service, ServiceExt};

use super::ReqBody;
use crate::body::Body;
use crate::config::RetryConfig;
use crate::error::{ProxyError, UpstreamError};
use crate::metrics::{Metrics, RetryLabels};
use crate::policy::allowlist::Rule;
use crate::target::RoutedRequest;

/// Retries a quiet service may make before its requests have refilled the budget.
pub const RESERVE: i64 = 3;
/// The most retries the budget holds.
pub const CAP: i64 = 10;

/// One service's retry settings and budget, built at start.
#[derive(Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Duration,
    /// Operations with unsafe methods that may be retried.
    operations: Vec<Rule>,
    budget: Budget,
}

impl RetryPolicy {
    pub fn new(cfg: &RetryConfig) -> Result<Self, String> {
        Ok(Self {
            max_attempts: cfg.max_attempts.max(1),
            backoff: cfg.backoff,
            operations: cfg
                .operations
                .iter()
                .map(|r| Rule::parse(r))
                .collect::<Result<_, _>>()?,
            budget: Budget::new(cfg.budget_percent),
        })
    }

    /// Whether a failed attempt of `method path` may be sent again.
    pub fn may_retry(&self, method: &Method, path: &str) -> bool {
        self.max_attempts > 1
            && (matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
                || self
                    .operations
                    .iter()
                    .any(|r| r.matches(method.as_str(), path)))
    }

    /// The pause before attempt `attempt + 1`: between half and all of `backoff * 2^(attempt-1)`.
    fn pause(&self, attempt: u32) -> Duration {
        let full = self.backoff.saturating_mul(1 << (attempt - 1).min(10));
        let half = full / 2;
        half + half.mul_f64(jitter())
    }
}

/// Retry tokens in thousandths: each request deposits `budget_percent * 10`, each retry takes
/// 1000.
#[derive(Debug)]
struct Budget {
    milli: AtomicI64,
    deposit: i64,
}

impl Budget {
    fn new(percent: u32) -> Self {
        Self {
            milli: AtomicI64::new(RESERVE * 1000),
            deposit: i64::from(percent) * 10,
        }
    }

    fn deposit(&self) {
        if self.deposit > 0 {
            let _ = self
                .milli
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    Some((m + self.deposit).min(CAP * 1000))
                });
        }
    }

    fn try_withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }
}

/// A number in [0, 1): cheap, unpredictable enough to spread retries of many sidecars.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

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
    use super::*;

    fn policy(toml_ops: &[&str], attempts: u32, percent: u32) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            max_attempts: attempts,
            budget_percent: percent,
            backoff: Duration::from_millis(40),
            operations: toml_ops.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn safe_methods_and_listed_operations_only() {
        let p = policy(&["POST /v1/images/*/import"], 2, 20);
        assert!(p.may_retry(&Method::GET, "/v1/images"));
        assert!(p.may_retry(&Method::HEAD, "/v1/images"));
        assert!(p.may_retry(&Method::OPTIONS, "/"));
        assert!(p.may_retry(&Method::POST, "/v1/images/i-1/import"));
        assert!(!p.may_retry(&Method::POST, "/v1/images"));
        assert!(!p.may_retry(&Method::DELETE, "/v1/images/i-1"));
        assert!(!policy(&[], 1, 20).may_retry(&Method::GET, "/v1/images"));
    }

    #[test]
    fn pauses_grow_and_stay_jittered_within_bounds() {
        let p = policy(&[], 3, 20);
        for _ in 0..50 {
            let a = p.pause(1);
            let b = p.pause(2);
            assert!(
                a >= Duration::from_millis(20) && a <= Duration::from_millis(40),
                "{a:?}"
            );
            assert!(
                b >= Duration::from_millis(40) && b <= Duration::from_millis(80),
                "{b:?}"
            );
        }
    }

    #[test]
    fn the_budget_has_a_reserve_and_refills_by_percent() {
        let b = Budget::new(50);
        for _ in 0..RESERVE {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        b.deposit();
        assert!(!b.try_withdraw(), "half a retry is not a retry");
        b.deposit();
        assert!(b.try_withdraw());
        for _ in 0..100 {
            b.deposit();
        }
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        assert_eq!(n, CAP);
    }

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
