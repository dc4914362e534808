//! Concurrency limits: at most `server.max_concurrent_requests` requests are handled at once
//! ([`ConcurrencyLimitLayer`]), and at most `services.NAME.max_concurrent_requests` for one
//! service ([`ServiceLimitLayer`], a bulkhead: a hanging upstream fills only its own share, so
//! requests to healthy services still get permits). One more is answered 503 `overloaded` with
//! `Retry-After` at once (naming the service when its share is full) instead of waiting in an
//! unbounded queue. Permits are held until the response headers are sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::error::ProxyError;
use crate::target::RoutedRequest;

#[derive(Clone, Debug)]
pub(crate) struct ConcurrencyLimitLayer {
    semaphore: Arc<Semaphore>,
    limit: usize,
}

impl ConcurrencyLimitLayer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            semaphore: self.semaphore.clone(),
            limit: self.limit,
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ConcurrencyLimit<S> {
    semaphore: Arc<Semaphore>,
    limit: usize,
    inner: S,
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req>,
    S::Error: From<ProxyError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = LimitFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => LimitFuture::Admitted {
                inner: self.inner.call(req),
                permit: Some(permit),
            },
            Err(_) => LimitFuture::Refused {
                err: Some(ProxyError::Overloaded { limit: self.limit }),
                _r: std::marker::PhantomData,
            },
        }
    }
}

/// Enforces each routed service's share; services without one pass.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ServiceLimitLayer;

impl<S> Layer<S> for ServiceLimitLayer {
    type Service = ServiceLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServiceLimit { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ServiceLimit<S> {
    inner: S,
}

impl<S, B> Service<RoutedRequest<B>> for ServiceLimit<S>
where
    S: Service<RoutedRequest<B>, Error = ProxyError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = LimitFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: RoutedRequest<B>) -> Self::Future {
        let Some(share) = &routed.target().share else {
            return LimitFuture::Admitted {
                inner: self.inner.call(routed),
                permit: None,
            };
        };
        match share.semaphore.clone().try_acquire_owned() {
            Ok(permit) => LimitFuture::Admitted {
                inner: self.inner.call(routed),
                permit: Some(permit),
            },
            Err(_) => LimitFuture::Refused {
                err: Some(ProxyError::ServiceOverloaded {
                    service: routed.target().name().to_owned(),
                    limit: share.limit,
                }),
                _r: std::marker::PhantomData,
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = LimitProj]
    pub enum LimitFuture<F, R> {
        Admitted { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        Refused { err: Option<ProxyError>, _r: std::marker::PhantomData<R> },
    }
}

impl<F, R, E> Future for LimitFuture<F, R>
where
    F: Future<Output = Result<R, E>>,
    E: From<ProxyError>,
{
    type Output = Result<R, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitProj::Admitted { inner, permit } => {
                let out = std::task::ready!(inner.poll(cx));
                permit.take();
                Poll::Ready(out)
            }
            LimitProj::Refused { err, .. } => match err.take() {
                Some(e) => Poll::Ready(Err(e.into())),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{routed, service, target_for};
    use crate::metrics::Metrics;
    use crate::target::Target;
    use http::Response;
    use tower::ServiceExt;

    /// An inner service whose answers wait until `gate` is opened.
    fn held(
        gate: Arc<tokio::sync::Notify>,
    ) -> impl Service<
        RoutedRequest<crate::body::Body>,
        Response = Response<crate::body::Body>,
        Error = ProxyError,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: RoutedRequest<crate::body::Body>| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, ProxyError>(Response::new(crate::body::empty()))
            }
        })
    }

    #[tokio::test]
    async fn a_full_share_refuses_only_its_own_service() {
        let metrics = Metrics::new();
        let mut cfg = service("slow");
        cfg.max_concurrent_requests = Some(2);
        let slow = target_for(cfg, &metrics);
        let fast = target_for(service("fast"), &metrics);
        let gate = Arc::new(tokio::sync::Notify::new());
        let svc = ServiceLimitLayer.layer(held(gate.clone()));
        let req = |t: &Arc<Target>| routed(t, "GET", "/v1/x", crate::body::empty());
        let a = tokio::spawn(svc.clone().oneshot(req(&slow)));
        let b = tokio::spawn(svc.clone().oneshot(req(&slow)));
        tokio::task::yield_now().await;
        // The permits are taken in `call`, which the spawned tasks have run.
        let e = svc.clone().oneshot(req(&slow)).await.unwrap_err();
        assert_eq!(e.code(), "overloaded");
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            e.message()
                .contains("services.slow.max_concurrent_requests = 2"),
            "{}",
            e.message()
        );
        // Another service: no share configured, admitted.
        let c = tokio::spawn(svc.clone().oneshot(req(&fast)));
        tokio::task::yield_now().await;
        gate.notify_waiters();
        for t in [a, b, c] {
            t.await.unwrap().unwrap();
        }
        // Permits are back once answered.
        let d = tokio::spawn(svc.clone().oneshot(req(&slow)));
        tokio::task::yield_now().await;
        gate.notify_waiters();
        d.await.unwrap().unwrap();
    }
}
