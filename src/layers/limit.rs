//! Concurrency limit: at most `max_concurrent_requests` requests are handled at once; one more
//! is answered 503 `overloaded` with `Retry-After` at once instead of waiting in an unbounded
//! queue. The permit is held until the response headers are sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::error::ProxyError;

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
