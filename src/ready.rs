//! Calling a tower service that is ready at once without tower's `Oneshot` around it.
//!
//! The proxy's stack is ready whenever it is asked (every layer passes `poll_ready` through to
//! `Forward`, which is always ready), so wrapping each request in a `Oneshot` only moved the
//! request and the stack's future between its states. Guarantees: `call` only after
//! `poll_ready` said ready, as tower requires; a service that is not ready at once is driven by
//! `Oneshot` as before (its first `poll_ready`, made with a no-op waker, is simply repeated).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tower::util::Oneshot;
use tower::Service;

pin_project_lite::pin_project! {
    /// `svc.call(req)`, or a `Oneshot` when `svc` was not ready at once.
    #[project = ReadyCallProj]
    pub(crate) enum ReadyCall<S, Req>
    where
        S: Service<Req>,
    {
        Called { #[pin] fut: S::Future },
        Waiting { #[pin] oneshot: Oneshot<S, Req> },
    }
}

/// Calls `svc` with `req` now if it is ready, else once it is.
pub(crate) fn ready_call<S: Service<Req>, Req>(mut svc: S, req: Req) -> ReadyCall<S, Req> {
    match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => ReadyCall::Called { fut: svc.call(req) },
        _ => ReadyCall::Waiting {
            oneshot: Oneshot::new(svc, req),
        },
    }
}

impl<S: Service<Req>, Req> Future for ReadyCall<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ReadyCallProj::Called { fut } => fut.poll(cx),
            ReadyCallProj::Waiting { oneshot } => oneshot.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Ready after `pending` polls of `poll_ready`; counts calls.
    #[derive(Clone)]
    struct Slow {
        pending: Arc<AtomicUsize>,
        calls: Arc<AtomicUsize>,
    }

    impl Service<u32> for Slow {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<u32, Self::Error>>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.pending.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(Ok(()));
            }
            self.pending.fetch_sub(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        fn call(&mut self, req: u32) -> Self::Future {
            assert_eq!(
                self.pending.load(Ordering::SeqCst),
                0,
                "called before ready"
            );
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(req + 1))
        }
    }

    #[tokio::test]
    async fn a_ready_service_is_called_at_once_and_a_busy_one_once_ready() {
        for pending in [0, 3] {
            let svc = Slow {
                pending: Arc::new(AtomicUsize::new(pending)),
                calls: Arc::default(),
            };
            let calls = svc.calls.clone();
            let fut = ready_call(svc, 41);
            assert_eq!(matches!(fut, ReadyCall::Called { .. }), pending == 0);
            assert_eq!(calls.load(Ordering::SeqCst), usize::from(pending == 0));
            assert_eq!(fut.await.unwrap(), 42);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }
}
