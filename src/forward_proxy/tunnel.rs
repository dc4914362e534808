//! Inside an accepted CONNECT: TLS terminated here with a leaf for the CONNECT host, then an
//! HTTP server (h2 or HTTP/1.1, by ALPN) whose every request goes to the data-plane stack.
//!
//! Guarantees: the client's TLS ClientHello must name the CONNECT host (SNI; an IP-address
//! authority may send none), else the handshake fails and nothing is served; every request in
//! the tunnel carries [`Intercepted`] with the CONNECT authority, so routing sends it to that
//! authority's service and answers 421 when its Host names another; the tunnel counts for the
//! drain and closes gracefully on SIGTERM like any connection.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;

use super::{ForwardProxy, Refusal};
use crate::config::ServerConfig;
use crate::layers::trace::Mode;
use crate::route::Intercepted;
use crate::server::HttpService;

/// The HTTP server inside tunnels: h2 or HTTP/1.1 (ALPN picked it in the handshake), with the
/// plain listener's header limits.
pub(crate) fn builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
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

/// An accepted CONNECT, waiting for hyper to hand over the connection.
pub(crate) struct Tunnel<S> {
    pub authority: Authority,
    /// The service the authority names.
    pub target: Arc<str>,
    pub fp: Arc<ForwardProxy>,
    pub stack: S,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub idle: Duration,
    pub handshake_timeout: Duration,
}

impl<S: HttpService> Tunnel<S> {
    /// Terminates TLS on `io` and serves the requests inside until the client closes, the
    /// connection is idle for `idle`, or `closing` turns true (the listener stopped).
    pub async fn run<I>(self, io: I, closing: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let host = self
            .authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let handshake = async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
                .await
                .map_err(|_| Refusal::Handshake)?;
            let sni = start
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase);
            let matches = match sni.as_deref() {
                Some(name) => name == host,
                // Clients send no SNI for an IP address.
                None => host.parse::<IpAddr>().is_ok(),
            };
            if !matches {
                tracing::info!(
                    target: "access",
                    mode = "forward",
                    authority = %self.authority,
                    sni = sni.as_deref().unwrap_or("-"),
                    error_code = "sni_mismatch",
                    "TLS in the tunnel named another host; handshake refused"
                );
                // Fails the handshake with an alert rather than a bare close.
                if let Ok(refuse) = super::ca::refusing_config() {
                    let _ = start.into_stream(refuse).await;
                }
                return Err(Refusal::SniMismatch);
            }
            let config = self.fp.ca.server_config(&host).map_err(|e| {
                tracing::warn!(error = %e, "forward proxy: no leaf certificate");
                Refusal::Handshake
            })?;
            start.into_stream(config).await.map_err(|e| {
                tracing::debug!(error = %e, authority = %self.authority, "TLS handshake in the tunnel failed");
                Refusal::Handshake
            })
        };
        let tls = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(why)) => return self.fp.refuse(why),
            Err(_) => return self.fp.refuse(Refusal::Handshake),
        };
        let intercepted = Intercepted {
            service: self.target.clone(),
            authority: Some(self.authority.clone()),
        };
        let svc = tower::util::MapRequest::new(self.stack, move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(intercepted.clone());
            req.extensions_mut().insert(Mode::FORWARD);
            req
        });
        serve_tls(
            self.builder,
            tls,
            TowerToHyperService::new(svc),
            closing,
            self.idle,
        )
        .await;
    }
}

/// Serves the TLS stream inside one tunnel until it ends, closing it gracefully when `closing`
/// turns true or it has moved no bytes for `idle`.
async fn serve_tls<S, I>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: I,
    svc: TowerToHyperService<S>,
    mut closing: watch::Receiver<bool>,
    idle: Duration,
) where
    S: HttpService,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
        let quiet_since = || Duration::from_millis(last.load(Ordering::Relaxed));
        let idle_deadline = epoch + quiet_since() + idle;
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "tunnel connection ended with an error");
                }
                return;
            }
            _ = closing.wait_for(|c| *c), if !closing_requested => {
                conn.as_mut().graceful_shutdown();
                closing_requested = true;
            }
            () = tokio::time::sleep_until(idle_deadline.into()), if !closing_requested => {
                if epoch.elapsed().saturating_sub(quiet_since()) >= idle {
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
