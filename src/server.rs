//! Listeners: the serve loop shared by the data plane, the admin listener and the emulator,
//! with graceful shutdown. The admin endpoints themselves are in [`crate::admin`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::ServerConfig;

/// What the listeners serve: a tower service answering every request (errors are already
/// responses), cloned per connection.
pub trait HttpService:
    tower::Service<
        Request<Incoming>,
        Response = Response<crate::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<crate::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

fn builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // hyper answers 431 when a request's head does not fit.
        .max_buf_size(cfg.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, asks every
/// connection to close once its in-flight requests are answered, and waits up to `grace` for
/// them. Returns whether every connection finished in time. A connection with no bytes read
/// or written for `server.idle_timeout` is closed the same graceful way.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    service: S,
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> bool
where
    S: HttpService,
{
    let builder = Arc::new(builder(cfg));
    let idle = cfg.idle_timeout;
    let (closing_tx, closing_rx) = watch::channel(false);
    // Every connection task holds a sender; `recv` returns None once all have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(service.clone());
                tokio::spawn(connection(
                    builder.clone(),
                    stream,
                    svc,
                    closing_rx.clone(),
                    alive_tx.clone(),
                    idle,
                ));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(alive_tx);
    tokio::time::timeout(grace, alive_rx.recv()).await.is_ok()
}

async fn connection<S>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: tokio::net::TcpStream,
    svc: TowerToHyperService<S>,
    mut closing: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    idle: Duration,
) where
    S: HttpService,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Activity {
        inner: stream,
        epoch,
        last: last.clone(),
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut closing_requested = false;
    loop {
        let idle_deadline = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = closing.wait_for(|c| *c), if !closing_requested => {
                conn.as_mut().graceful_shutdown();
                closing_requested = true;
            }
            () = tokio::time::sleep_until(idle_deadline.into()), if !closing_requested => {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    conn.as_mut().graceful_shutdown();
                    closing_requested = true;
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that notes when it last moved bytes, for the idle timeout.
    struct Activity<T> {
        #[pin]
        inner: T,
        epoch: Instant,
        last: Arc<AtomicU64>,
    }
}

impl<T> Activity<T> {
    fn touch(epoch: &Instant, last: &AtomicU64) {
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let out = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            Self::touch(this.epoch, this.last);
        }
        out
    }
}

impl<T: AsyncWrite> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let out = this.inner.poll_write(cx, buf);
        if matches!(out, Poll::Ready(Ok(n)) if n > 0) {
            Self::touch(this.epoch, this.last);
        }
        out
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let out = this.inner.poll_write_vectored(cx, bufs);
        if matches!(out, Poll::Ready(Ok(n)) if n > 0) {
            Self::touch(this.epoch, this.last);
        }
        out
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
