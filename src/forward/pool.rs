//! The upstream connection pool of one service, over `hyper::client::conn`: HTTP/1.1
//! connections kept alive for reuse, or one shared HTTP/2 connection when TLS ALPN agrees.
//!
//! A service has exactly one upstream authority, so its pool is a short list, not a keyed map:
//! a request takes the newest ready connection, sends on it in place and leaves it listed.
//! hyper's HTTP/1 `SendRequest` reports ready again only once the exchange is over, its
//! response body read to the end, so that is when a listed connection is reused (the response
//! body needs no wrapper, and [`crate::body::Body`] stays hyper's `Incoming`). No task is
//! spawned per request, and hyper's send future is the only box.
//!
//! Guarantees: at most `max_idle` HTTP/1 connections listed (no HTTP/2 one when it is 0);
//! idle ones closed after `idle_timeout` (a reaper task runs while any are listed and ends
//! with the pool); a connection is reused only when hyper says it is ready, so one whose
//! response body was dropped early is never reused (hyper drains what it already has, or
//! closes it); closed ones are dropped at checkout; a request that a reused connection gave
//! back unsent (the upstream closed it while idle) is sent once more on a fresh connection, as
//! hyper-util's legacy client did (`retry_canceled_requests`); each connection is driven by its
//! own tokio task, which ends with it, except an HTTP/1 one opened for a request of a
//! downstream connection under [`super::affinity::drive`] (when `max_idle` is not 0): that one
//! is bound to the downstream connection, driven in its task and used first by its later
//! requests, and comes to the pool when the downstream connection ends; failures are
//! [`ClientError`]s that say, as the legacy client's did, whether connecting failed
//! ([`ClientError::is_connect`]), in the same words.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioExecutor;
use tower::Service;

use super::affinity::{Bound, Slot};
use super::connect::UpstreamConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's answer to one request on one connection (its future type has no name: boxed).
type Sending<B> =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<B>>>> + Send>>;

/// A new connection, with the request sent on it (only when no listed connection is ready:
/// boxed).
type Connecting<B> = Pin<Box<dyn Future<Output = Result<Sending<B>, ClientError>> + Send>>;

/// One service's upstream client: cheap to clone, all clones share the pool.
pub struct UpstreamClient<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for UpstreamClient<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> fmt::Debug for UpstreamClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("upstream", &self.inner.authority)
            .finish_non_exhaustive()
    }
}

struct Inner<B> {
    connector: HttpsConnector<UpstreamConnector>,
    /// `scheme://authority/`, what the connector is asked for.
    dst: Uri,
    scheme: Scheme,
    authority: Authority,
    /// `Host` for an HTTP/1 request that has none (the port only when not the default).
    host: HeaderValue,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    max_idle: usize,
    idle_timeout: Duration,
    state: Mutex<State<B>>,
}

struct State<B> {
    /// HTTP/1 connections, oldest first; busy ones stay listed until hyper says they are ready.
    h1: Vec<Listed<B>>,
    /// The shared HTTP/2 connection, when the upstream negotiated h2, and when it last sent.
    h2: Option<(http2::SendRequest<B>, Instant)>,
    /// Whether the reaper task runs.
    reaping: bool,
}

struct Listed<B> {
    tx: http1::SendRequest<B>,
    /// When it last sent, or the reaper last saw it busy: it has been idle at most since.
    since: Instant,
}

/// A new connection's sender; an HTTP/1 one with its connection's future, not yet driven
/// (spawned, or bound to the downstream connection).
enum Fresh<B> {
    H1(http1::SendRequest<B>, Driving),
    H2(http2::SendRequest<B>),
}

/// An HTTP/1 connection's future, to its end.
type Driving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An HTTP/1 connection bound to the downstream connection it was opened for.
struct BoundH1<B> {
    pool: Weak<Inner<B>>,
    tx: http1::SendRequest<B>,
    /// When it last sent: it has been idle at most since.
    since: Instant,
    conn: Driving,
}

impl<B> Bound for BoundH1<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn pool(&self) -> usize {
        // The pool's allocation outlives this Weak: no other pool can have its address.
        self.pool.as_ptr() as *const () as usize
    }
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.conn.as_mut().poll(cx)
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn release(self: Box<Self>) {
        let BoundH1 {
            pool,
            tx,
            since,
            conn,
        } = *self;
        let (Some(inner), Ok(rt)) = (pool.upgrade(), tokio::runtime::Handle::try_current()) else {
            // The pool was replaced (a reload) or the runtime is stopping: closed.
            return;
        };
        if tx.is_closed() {
            return;
        }
        // Driven on its own from here, as a connection the pool opened is: it finishes an
        // exchange the downstream client left, or waits listed for reuse.
        rt.spawn(conn);
        let mut state = inner.lock();
        if state.h1.len() < inner.max_idle {
            state.h1.push(Listed { tx, since });
            inner.reap_while_listed(&mut state);
        }
    }
}

impl<B> UpstreamClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool for the upstream `scheme://authority`, connecting through `connector`.
    pub(super) fn new(
        connector: HttpsConnector<UpstreamConnector>,
        scheme: Scheme,
        authority: Authority,
        h1: http1::Builder,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let dst = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("cannot form a URI for the upstream: {e}"))?;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::try_from(host).map_err(|e| format!("upstream host: {e}"))?;
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(hyper_util::rt::TokioTimer::new());
        Ok(Self {
            inner: Arc::new(Inner {
                connector,
                dst,
                scheme,
                authority,
                host,
                h1,
                h2,
                max_idle,
                idle_timeout,
                state: Mutex::new(State {
                    h1: Vec::new(),
                    h2: None,
                    reaping: false,
                }),
            }),
        })
    }

    /// Sends `req` (its URI absolute, naming this pool's upstream) and resolves to the
    /// response head.
    pub fn request(&self, req: Request<B>) -> ResponseFuture<B> {
        self.send(req, Instant::now())
    }

    /// [`request`](Self::request), with the caller's reading of the clock.
    pub(crate) fn send(&self, mut req: Request<B>, now: Instant) -> ResponseFuture<B> {
        debug_assert_eq!(req.uri().authority(), Some(&self.inner.authority));
        let inner = &self.inner;
        if inner.max_idle > 0 {
            // The downstream connection's own upstream connection first.
            let mut unsent = Some(req);
            let sent = Slot::with_bound(inner.key(), |bound| {
                let b = bound.get_mut()?.as_any().downcast_mut::<BoundH1<B>>()?;
                if b.tx.is_ready() && now.saturating_duration_since(b.since) < inner.idle_timeout {
                    let mut req = unsent.take()?;
                    b.since = now;
                    inner.to_origin_form(&mut req);
                    return Some(Box::pin(b.tx.try_send_request(req)) as Sending<B>);
                }
                if b.tx.is_closed() || b.tx.is_ready() {
                    // Closed by the upstream, or idle too long: closed here.
                    bound.close();
                }
                // Otherwise still busy (pipelined requests): a fresh connection replaces it.
                None
            });
            if let Some(Some(sending)) = sent {
                return ResponseFuture::sending(sending, Some(inner.clone()));
            }
            let Some(r) = unsent else {
                unreachable!("the request is taken only when it is sent")
            };
            req = r;
        }
        let mut state = inner.lock();
        if let Some((h2, used)) = &mut state.h2 {
            if !h2.is_closed() && now.saturating_duration_since(*used) < inner.idle_timeout {
                *used = now;
                let sending = Box::pin(h2.try_send_request(req));
                drop(state);
                return ResponseFuture::sending(sending, Some(inner.clone()));
            }
            state.h2 = None;
        }
        // The newest first: the oldest age out when traffic falls.
        let mut i = state.h1.len();
        while i > 0 {
            i -= 1;
            let listed = &mut state.h1[i];
            if listed.tx.is_ready() {
                if now.saturating_duration_since(listed.since) < inner.idle_timeout {
                    listed.since = now;
                    inner.to_origin_form(&mut req);
                    let sending = Box::pin(listed.tx.try_send_request(req));
                    drop(state);
                    return ResponseFuture::sending(sending, Some(inner.clone()));
                }
                state.h1.swap_remove(i);
            } else if listed.tx.is_closed() {
                state.h1.swap_remove(i);
            }
            // Otherwise busy with an exchange: left for a later request.
        }
        drop(state);
        ResponseFuture::connecting(inner.clone(), req)
    }
}

impl<B> Inner<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a bound connection knows its pool by: its address.
    fn key(&self) -> usize {
        self as *const Self as *const () as usize
    }

    /// What hyper's HTTP/1 client sends: the path and query, and a `Host` (as the legacy
    /// client added one when missing).
    fn to_origin_form(&self, req: &mut Request<B>) {
        let pq = std::mem::take(req.uri_mut()).into_parts().path_and_query;
        if let Some(pq) = pq.filter(|pq| pq.as_str() != "/") {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
    }

    /// Back to the absolute URI (for a retry, which may go out on HTTP/2).
    fn to_absolute_form(&self, req: &mut Request<B>) {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

impl<B> Inner<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Opens a connection and sends `req` on it.
    async fn connect_and_send(self: Arc<Self>, req: Request<B>) -> Result<Sending<B>, ClientError> {
        let fresh = self.connect().await?;
        Ok(self.send_fresh(fresh, req))
    }

    /// Opens a connection (TCP, tunnel and TLS: the connector) and hands it to hyper, whose
    /// connection task is spawned here and ends with the connection.
    async fn connect(&self) -> Result<Fresh<B>, ClientError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ClientError::connect)?;
        let io = connector
            .call(self.dst.clone())
            .await
            .map_err(ClientError::connect)?;
        if io.connected().is_negotiated_h2() {
            let (mut tx, conn) = self.h2.handshake(io).await.map_err(ClientError::send)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream connection error: {e}");
                }
            });
            tx.ready().await.map_err(ClientError::send)?;
            Ok(Fresh::H2(tx))
        } else {
            let (tx, conn) = self.h1.handshake(io).await.map_err(ClientError::send)?;
            let conn: Driving = Box::pin(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream connection error: {e:?}");
                }
            });
            Ok(Fresh::H1(tx, conn))
        }
    }

    /// Sends `req` on a fresh connection and lists it for the requests after.
    fn send_fresh(self: &Arc<Self>, fresh: Fresh<B>, mut req: Request<B>) -> Sending<B> {
        let now = Instant::now();
        match fresh {
            Fresh::H1(mut tx, conn) => {
                self.to_origin_form(&mut req);
                // A fresh connection takes its first request before it is first polled.
                let sending = Box::pin(tx.try_send_request(req));
                let mut fresh = Some((tx, conn));
                if self.max_idle > 0 {
                    Slot::with_bound(self.key(), |bound| {
                        if let Some((tx, conn)) = fresh.take() {
                            let pool = Arc::downgrade(self);
                            // One this replaces (busy, or closed) goes to its pool.
                            bound.bind(Box::new(BoundH1 {
                                pool,
                                tx,
                                since: now,
                                conn,
                            }));
                        }
                    });
                }
                let Some((tx, conn)) = fresh else {
                    return sending;
                };
                tokio::spawn(conn);
                let mut state = self.lock();
                if state.h1.len() < self.max_idle {
                    state.h1.push(Listed { tx, since: now });
                    self.reap_while_listed(&mut state);
                }
                // Not listed: dropping its sender closes it once this exchange is over.
                sending
            }
            Fresh::H2(mut tx) => {
                let sending = Box::pin(tx.try_send_request(req));
                let mut state = self.lock();
                let shared = state.h2.as_ref().is_some_and(|(h2, _)| !h2.is_closed());
                // A second h2 connection made concurrently serves only its own request; with
                // `max_idle` 0 none is kept (as the legacy pool did).
                if !shared && self.max_idle > 0 {
                    state.h2 = Some((tx, now));
                    self.reap_while_listed(&mut state);
                }
                sending
            }
        }
    }

    fn reap_while_listed(self: &Arc<Self>, state: &mut State<B>) {
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes connections idle for `idle_timeout` (checking a quarter of it apart); ends when the
/// pool is gone or holds no connection.
async fn reap<B>(pool: Weak<Inner<B>>) {
    loop {
        let every = match pool.upgrade() {
            Some(inner) => (inner.idle_timeout / 4).max(Duration::from_millis(100)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = pool.upgrade() else { return };
        let mut state = inner.lock();
        let now = Instant::now();
        let timeout = inner.idle_timeout;
        state.h1.retain_mut(|c| {
            if c.tx.is_closed() {
                return false;
            }
            if !c.tx.is_ready() {
                // Still busy (a long download, say): idle at most from now.
                c.since = now;
                return true;
            }
            now.saturating_duration_since(c.since) < timeout
        });
        if state.h2.as_ref().is_some_and(|(h2, used)| {
            h2.is_closed() || now.saturating_duration_since(*used) >= timeout
        }) {
            state.h2 = None;
        }
        if state.h1.is_empty() && state.h2.is_none() {
            state.reaping = false;
            return;
        }
    }
}

enum Step<B> {
    Sending {
        sending: Sending<B>,
        /// The pool, when the connection was reused: a request it gives back unsent is sent
        /// once more on a fresh connection.
        retry: Option<Arc<Inner<B>>>,
    },
    Connecting(Connecting<B>),
    Done,
}

/// The upstream's response head, or why there is none.
pub struct ResponseFuture<B> {
    step: Step<B>,
}

impl<B> ResponseFuture<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn sending(sending: Sending<B>, retry: Option<Arc<Inner<B>>>) -> Self {
        Self {
            step: Step::Sending { sending, retry },
        }
    }

    fn connecting(inner: Arc<Inner<B>>, req: Request<B>) -> Self {
        Self {
            step: Step::Connecting(Box::pin(inner.connect_and_send(req))),
        }
    }
}

// Every field is boxed or behind an Arc: nothing here is pinned.
impl<B> Unpin for ResponseFuture<B> {}

impl<B> Future for ResponseFuture<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Incoming>, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let step = &mut self.step;
        loop {
            match step {
                Step::Sending { sending, retry } => {
                    let mut err = match ready!(sending.as_mut().poll(cx)) {
                        Ok(resp) => {
                            *step = Step::Done;
                            return Poll::Ready(Ok(resp));
                        }
                        Err(err) => err,
                    };
                    let error = match (err.take_message(), retry.take()) {
                        (Some(mut req), Some(inner)) => {
                            tracing::trace!(
                                "reused upstream connection closed before the request was sent: {:?}; sending on a fresh one",
                                err.error()
                            );
                            inner.to_absolute_form(&mut req);
                            *step = Step::Connecting(Box::pin(inner.connect_and_send(req)));
                            continue;
                        }
                        (Some(_), None) => ClientError::new(Kind::Canceled, err.into_error()),
                        (None, _) => ClientError::send(err.into_error()),
                    };
                    *step = Step::Done;
                    return Poll::Ready(Err(error));
                }
                Step::Connecting(connecting) => match ready!(connecting.as_mut().poll(cx)) {
                    Ok(sending) => {
                        *step = Step::Sending {
                            sending,
                            retry: None,
                        }
                    }
                    Err(e) => {
                        *step = Step::Done;
                        return Poll::Ready(Err(e));
                    }
                },
                Step::Done => panic!("ResponseFuture polled after it completed"),
            }
        }
    }
}

/// An upstream request failed. Its text is the legacy client's (`client error (Connect)`,
/// `client error (SendRequest)`, `client error (Canceled)`), so messages built on it stay the
/// same; the cause (the connector's error, or hyper's) is its source.
pub struct ClientError {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Connecting failed: TCP, the egress tunnel or TLS.
    Connect,
    /// The request failed on its connection: the handshake, writing it, reading the response.
    SendRequest,
    /// A fresh connection closed before the request was sent.
    Canceled,
}

impl ClientError {
    fn new(kind: Kind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    pub(crate) fn connect(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Connect, source)
    }

    fn send(source: hyper::Error) -> Self {
        Self::new(Kind::SendRequest, source)
    }

    /// Whether connecting to the upstream failed (nothing was sent).
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = f.debug_tuple("ClientError");
        t.field(&self.kind);
        if let Some(source) = &self.source {
            t.field(source);
        }
        t.finish()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client error ({:?})", self.kind)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex as StdMutex;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;
    use crate::forward::connect::Connect;
    use crate::forward::drive;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    /// Bounds every wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    /// A local upstream: `/small` answers `ok`, `/big` 8 MiB, `/close` `ok` and closes the
    /// connection; counts connections accepted and closed, and records each request's version
    /// and `Host`.
    struct Upstream {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        seen: Seen,
    }

    /// Each request's version and `Host`.
    type Seen = Arc<StdMutex<Vec<(http::Version, Option<HeaderValue>)>>>;

    async fn upstream(tls: bool) -> Upstream {
        let acceptor = tls.then(|| {
            let cert = std::fs::read(format!("{FIXTURES}/server.pem")).unwrap();
            let key = std::fs::read(format!("{FIXTURES}/server.key")).unwrap();
            let certs = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(&key).unwrap();
            let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            closed: Arc::default(),
            seen: Arc::default(),
        };
        let (accepted, closed, seen) = (up.accepted.clone(), up.closed.clone(), up.seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, closed, seen) = (acceptor.clone(), closed.clone(), seen.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let host = req.headers().get(header::HOST).cloned();
                        seen.lock().unwrap().push((req.version(), host));
                        let path = req.uri().path().to_owned();
                        let body = if path == "/big" {
                            Bytes::from(vec![b'x'; 8 << 20])
                        } else {
                            Bytes::from_static(b"ok")
                        };
                        let mut resp = Response::new(Full::new(body));
                        if path == "/close" {
                            // hyper closes the connection after this response.
                            resp.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => auto.serve_connection(TokioIo::new(tls), svc).await,
                            Err(_) => Ok(()),
                        },
                        None => auto.serve_connection(TokioIo::new(tcp), svc).await,
                    };
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        up
    }

    fn client(
        addr: std::net::SocketAddr,
        tls: bool,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> UpstreamClient<Empty<Bytes>> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(format!("{FIXTURES}/ca.pem")).unwrap();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(UpstreamConnector(Connect::Direct(http)));
        let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
        let authority = Authority::try_from(addr.to_string()).unwrap();
        UpstreamClient::new(
            https,
            scheme,
            authority,
            http1::Builder::new(),
            max_idle,
            idle_timeout,
        )
        .unwrap()
    }

    fn get(client: &UpstreamClient<Empty<Bytes>>, path: &str) -> Request<Empty<Bytes>> {
        let inner = &client.inner;
        Request::get(format!("{}://{}{path}", inner.scheme, inner.authority))
            .body(Empty::new())
            .unwrap()
    }

    async fn fetch(client: &UpstreamClient<Empty<Bytes>>, path: &str) -> Bytes {
        let resp = tokio::time::timeout(WAIT, client.request(get(client, path)))
            .await
            .unwrap()
            .unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    /// Polls `done` until it holds, within [`WAIT`].
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_http1_connection_is_reused_once_its_body_is_read_and_gets_a_host() {
        let up = upstream(false).await;
        let client = client(up.addr, false, 4, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(&fetch(&client, "/small").await[..], b"ok");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        let seen = up.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        let host = HeaderValue::try_from(up.addr.to_string()).unwrap();
        for (version, h) in seen {
            assert_eq!(version, http::Version::HTTP_11);
            assert_eq!(h.as_ref(), Some(&host));
        }
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let up = upstream(false).await;
        let client = client(up.addr, false, 4, Duration::from_secs(60));
        let resp = client.request(get(&client, "/big")).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(&fetch(&client, "/small").await[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        eventually("the unread connection closes", || {
            up.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        // The closed one is never taken again (the reaper or a checkout drops it).
        assert_eq!(&fetch(&client, "/small").await[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        let open = |c: &Listed<_>| !c.tx.is_closed();
        assert_eq!(client.inner.lock().h1.iter().filter(|c| open(c)).count(), 1);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let up = upstream(false).await;
        let client = client(up.addr, false, 1, Duration::from_secs(60));
        // Both connect: neither finds a connection in the pool.
        let (a, b) = tokio::join!(
            client.request(get(&client, "/small")),
            client.request(get(&client, "/small"))
        );
        for resp in [a, b] {
            resp.unwrap().into_body().collect().await.unwrap();
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        eventually("the connection over max_idle closes", || {
            up.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        for _ in 0..3 {
            fetch(&client, "/small").await;
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);

        // None kept: every request connects.
        let none = self::client(up.addr, false, 0, Duration::from_secs(60));
        fetch(&none, "/small").await;
        fetch(&none, "/small").await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout_and_the_reaper_ends() {
        let up = upstream(false).await;
        let client = client(up.addr, false, 4, Duration::from_millis(300));
        fetch(&client, "/small").await;
        assert!(client.inner.lock().reaping);
        eventually("the idle connection closes", || {
            up.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        eventually("the reaper ends", || !client.inner.lock().reaping).await;
        assert!(client.inner.lock().h1.is_empty());
        // The next request connects afresh and starts the reaper again.
        fetch(&client, "/small").await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        assert!(client.inner.lock().reaping);
    }

    /// The upstream closes a kept-alive connection while it is idle, and a request takes it
    /// in the same turn of the runtime in which its close is seen, before its connection task
    /// runs: hyper gives the request back unsent, and it goes out once more on a fresh
    /// connection.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_a_reused_connection_gave_back_unsent_is_retried_on_a_fresh_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let control_addr = control.local_addr().unwrap();
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            let read_head = |s: &mut std::net::TcpStream| {
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "the client closed early");
                    got.extend_from_slice(&buf[..n]);
                }
            };
            let (mut first, _) = listener.accept().unwrap();
            read_head(&mut first);
            first.write_all(answer).unwrap();
            let (mut trigger, _) = control.accept().unwrap();
            close_rx.recv_timeout(WAIT).unwrap();
            // The trigger first, so the runtime sees it before the close.
            trigger.write_all(b"!").unwrap();
            first.shutdown(std::net::Shutdown::Both).unwrap();
            closed_tx.send(()).unwrap();
            let (mut second, _) = listener.accept().unwrap();
            read_head(&mut second);
            second.write_all(answer).unwrap();
            // What the first connection got after its close, if anything.
            first.set_read_timeout(Some(WAIT)).unwrap();
            let mut rest = Vec::new();
            let _ = first.read_to_end(&mut rest);
            rest
        });
        let client = client(addr, false, 4, Duration::from_secs(60));
        assert_eq!(&fetch(&client, "/small").await[..], b"ok");
        eventually("the connection is ready again", || {
            client
                .inner
                .lock()
                .h1
                .first()
                .is_some_and(|c| c.tx.is_ready())
        })
        .await;
        let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel();
        let sender = client.clone();
        let trigger = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut ctl = tokio::net::TcpStream::connect(control_addr).await.unwrap();
            waiting_tx.send(()).unwrap();
            ctl.read_exact(&mut [0u8; 1]).await.unwrap();
            let sending = sender.request(get(&sender, "/small"));
            let resp = tokio::time::timeout(WAIT, sending).await.unwrap().unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        });
        waiting_rx.await.unwrap();
        close_tx.send(()).unwrap();
        // Blocks this (only) runtime thread until both the trigger and the close are sent,
        // so the runtime sees them in one batch, the trigger first.
        closed_rx.recv_timeout(WAIT).unwrap();
        let body = tokio::time::timeout(WAIT, trigger).await.unwrap().unwrap();
        assert_eq!(&body[..], b"ok");
        let rest = server.join().unwrap();
        assert!(rest.is_empty(), "the closed connection got {rest:?}");
    }

    /// How many HTTP/1 connections the pool lists.
    fn listed(client: &UpstreamClient<Empty<Bytes>>) -> usize {
        client.inner.lock().h1.len()
    }

    #[tokio::test]
    async fn a_connection_opened_under_drive_is_its_own_then_the_pools() {
        let up = upstream(false).await;
        let client = client(up.addr, false, 4, Duration::from_secs(60));
        drive(async {
            for _ in 0..3 {
                assert_eq!(&fetch(&client, "/small").await[..], b"ok");
                // Bound to the driven future, not listed for others.
                assert_eq!(listed(&client), 0);
            }
        })
        .await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        // Handed to the pool when the driven future ended, and reused from there.
        assert_eq!(listed(&client), 1);
        assert_eq!(&fetch(&client, "/small").await[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(up.closed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_driven_future_has_its_own_connection() {
        let up = upstream(false).await;
        let client = client(up.addr, false, 1, Duration::from_secs(60));
        let (go_tx, go_rx) = tokio::sync::watch::channel(false);
        let one = |client: UpstreamClient<Empty<Bytes>>,
                   mut go: tokio::sync::watch::Receiver<bool>| {
            tokio::spawn(drive(async move {
                fetch(&client, "/small").await;
                // Both have connected before either sends again.
                go.wait_for(|go| *go).await.unwrap();
                for _ in 0..5 {
                    assert_eq!(&fetch(&client, "/small").await[..], b"ok");
                }
            }))
        };
        let a = one(client.clone(), go_rx.clone());
        let b = one(client.clone(), go_rx);
        eventually("both connect", || up.accepted.load(Ordering::SeqCst) == 2).await;
        go_tx.send(true).unwrap();
        for t in [a, b] {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(up.seen.lock().unwrap().len(), 12);
        // Back to a pool of max_idle 1: one listed, the other closed.
        assert_eq!(listed(&client), 1);
        eventually("the one over max_idle closes", || {
            up.closed.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn a_bound_connection_that_closed_or_idled_too_long_is_replaced() {
        let up = upstream(false).await;
        let client = client(up.addr, false, 4, Duration::from_millis(300));
        drive(async {
            assert_eq!(&fetch(&client, "/close").await[..], b"ok");
            // Driven here, its end is seen without another request.
            eventually("the upstream's close", || {
                up.closed.load(Ordering::SeqCst) == 1
            })
            .await;
            assert_eq!(&fetch(&client, "/small").await[..], b"ok");
            assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
            // Idle past idle_timeout: closed, and the request goes out on a fresh one.
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(&fetch(&client, "/small").await[..], b"ok");
            assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
            eventually("the idle one closes", || {
                up.closed.load(Ordering::SeqCst) == 2
            })
            .await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_request_for_another_service_hands_the_bound_connection_to_its_pool() {
        let (up_a, up_b) = (upstream(false).await, upstream(false).await);
        let a = client(up_a.addr, false, 4, Duration::from_secs(60));
        let b = client(up_b.addr, false, 4, Duration::from_secs(60));
        drive(async {
            fetch(&a, "/small").await;
            assert_eq!(listed(&a), 0);
            fetch(&b, "/small").await;
            // a's went to its pool when b's was bound, and is taken from there.
            assert_eq!(listed(&a), 1);
            fetch(&a, "/small").await;
        })
        .await;
        assert_eq!(up_a.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(up_b.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(listed(&b), 1);

        // With max_idle 0 nothing is kept, bound or listed: every request connects.
        let none = self::client(up_a.addr, false, 0, Duration::from_secs(60));
        drive(async {
            fetch(&none, "/small").await;
            fetch(&none, "/small").await;
        })
        .await;
        assert_eq!(up_a.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn h2_by_alpn_is_one_shared_connection() {
        let up = upstream(true).await;
        let client = client(up.addr, true, 4, Duration::from_secs(60));
        assert_eq!(&fetch(&client, "/small").await[..], b"ok");
        let many = (0..5).map(|_| fetch(&client, "/small"));
        for body in futures_util::future::join_all(many).await {
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        let seen = up.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 6);
        assert!(
            seen.iter().all(|(v, _)| *v == http::Version::HTTP_2),
            "{seen:?}"
        );
        assert!(client.inner.lock().h1.is_empty());
    }

    #[tokio::test]
    async fn failures_say_whether_connecting_failed_in_the_legacy_clients_words() {
        // Nothing listens on a port just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = client(port, false, 4, Duration::from_secs(60));
        let err = client.request(get(&client, "/")).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert_eq!(err.to_string(), "client error (Connect)");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("tcp connect error"), "{cause}");

        // A TLS failure is a connect failure too: the plain upstream speaks no TLS.
        let up = upstream(false).await;
        let tls = self::client(up.addr, true, 4, Duration::from_secs(60));
        let err = tls.request(get(&tls, "/")).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");

        // An upstream that accepts and closes: the request failed, connecting did not.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                drop(tcp);
            }
        });
        let client = self::client(addr, false, 4, Duration::from_secs(60));
        let err = client.request(get(&client, "/")).await.unwrap_err();
        assert!(!err.is_connect(), "{err:?}");
        assert!(
            ["client error (SendRequest)", "client error (Canceled)"]
                .contains(&err.to_string().as_str()),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
