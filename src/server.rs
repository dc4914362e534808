//! Listeners: the serve loop shared by the data plane, the admin listener, the forward proxy
//! ([`crate::forward_proxy`], HTTP/1 only, whose accepted CONNECTs take their connection over
//! through [`Takeover`]) and the emulator. The admin endpoints themselves are in
//! [`crate::admin`].
//!
//! Guarantees:
//! - At most `server.max_connections` client connections at once (default: sized from the
//!   process's file-descriptor limit, see [`fd_budget`]); at the cap the loop stops accepting,
//!   so new connections wait in the kernel's backlog ([`LISTEN_BACKLOG`]) instead of failing,
//!   and accept errors are logged at most once per [`LOG_EVERY`] with a count of the ones
//!   left out.
//! - A connection with no request in flight for `server.idle_timeout` is closed gracefully
//!   (HTTP/2: GOAWAY), and dropped [`CLOSE_LIMIT`] later if the peer has not finished closing
//!   (an HTTP/2 peer that ignores GOAWAY and PING).
//! - A client that starts a request head and does not finish it within
//!   `server.header_read_timeout` gets `408` JSON `header_timeout`, then the connection closes.
//! - Draining (the data plane after SIGTERM): HTTP/1 responses carry `Connection: close` and
//!   HTTP/2 connections get GOAWAY at once, so clients stop reusing connections while the
//!   listener still accepts during `shutdown_delay`. When the listener stops, it first refuses
//!   new TCP connections (their SYNs go unanswered, and once it has closed they are refused),
//!   then takes every connection already in its backlog, so none is reset after its client
//!   wrote a request; idle connections close; requests still waiting for their response when
//!   `shutdown_grace` ends get `503` JSON `draining`.
//! - Protocol by the client's first bytes: the HTTP/2 prior-knowledge preface gets hyper's
//!   HTTP/2 server, anything else HTTP/1 (no hyper connection exists before the first byte).
//! - HTTP/1 is served a burst at a time: a fresh hyper connection from a request's first byte
//!   until no request is in flight after a response, then the socket is taken back (bytes
//!   hyper read past the response start the next burst; up to [`LINGER_MAX`] connections of a
//!   listener are taken back only once a look every [`LINGER`] finds them quiet, so a busy
//!   client keeps its hyper connection between requests), so an idle keep-alive connection
//!   holds no hyper buffers (measured about 1.8 KB each; an idle HTTP/2 connection keeps
//!   hyper's, about 22 KB). A connection is taken back only once hyper is reading the next
//!   request's head (see [`ConnState::reading_head`]): after a body read to its end, never
//!   in the middle of one. A body the service left unread makes hyper close the connection
//!   after the response instead.
//! - A [`Takeover`] set while a request is served gets the connection's bytes once hyper
//!   has written the response and ended the exchange (an accepted CONNECT), the bytes read
//!   past it first; the connection keeps its place under the cap until the takeover ends.
//! - An HTTP/1 connection's task also drives the upstream connection bound to it
//!   ([`crate::forward::drive`]); one quiet for [`RELEASE_UPSTREAM_AFTER`] between requests
//!   gives that upstream connection back to its pool, so idle clients hold none.
//! - Memory freed by a burst of connections is given back to the system ([`Trim`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::body::{Body, DownloadLimit, StallLimited};
use crate::config::{ListenAddr, ServerConfig};

/// What the listeners serve: a tower service answering every request (errors are already
/// responses), cloned per request.
pub trait HttpService:
    tower::Service<
        Request<Incoming>,
        Response = Response<crate::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Unpin
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
        + Unpin
        + 'static
{
}

/// After a graceful close starts with no request in flight, how long the peer has to finish
/// it before the connection is dropped.
pub(crate) const CLOSE_LIMIT: Duration = Duration::from_secs(2);
/// Accept errors and "at the connection cap" are logged at most this often.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);
/// After `shutdown_grace`, how long the `503 draining` answers get to be written.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);
/// When the listener stops, how long the handshakes under way get to complete into its backlog
/// after new connections are refused (a LAN's round trip many times over).
const HANDSHAKES_SETTLE: Duration = Duration::from_millis(50);
/// When the listener stops, how long a connection accepted but not yet used has to send its
/// first request.
const FIRST_REQUEST_AFTER_STOP: Duration = Duration::from_secs(1);
/// How often a connection whose request head was arriving when the listener stopped is
/// looked at again.
const STOP_RECHECK: Duration = Duration::from_millis(20);
/// An HTTP/1 connection that goes quiet after a response stays with hyper until a look, this
/// often, finds it quiet (one of at most [`LINGER_MAX`] per listener; the others are taken
/// back at once): a client sending request after request keeps its hyper connection instead
/// of paying a fresh one per request (about 7k instructions), and a quiet one costs hyper's
/// buffers (about 20 KB) for at most twice this long. hyper's header clock runs meanwhile,
/// which is safe because `header_read_timeout` is at least 1 s (checked at load).
const LINGER: Duration = Duration::from_millis(25);
/// At most this many connections of a listener linger at once, which bounds their memory
/// (about 2.5 MB) and what their buffers, freed later than the state of connections taken
/// back meanwhile, can leave scattered in the heap.
const LINGER_MAX: usize = 128;
/// Connections the kernel completes and queues for the listener (std's default is 128): at
/// the connection cap they wait there; past it, the kernel drops their SYNs and the clients
/// retry after a second or more.
const LISTEN_BACKLOG: u32 = 1024;
/// How long an HTTP/1 client connection may be quiet between requests before the upstream
/// connection bound to it goes back to the service's pool (within `max_idle_connections`):
/// idle clients hold no upstream connections, busy ones keep theirs.
const RELEASE_UPSTREAM_AFTER: Duration = Duration::from_secs(1);
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// ---------------------------------------------------------------- file descriptors

/// How the process's file descriptors are shared out: `limit` (RLIMIT_NOFILE after
/// [`raise_fd_limit`]), `reserved` for the admin listener, upstream pools, files and the
/// runtime, and `max_connections`: half of the rest, since every client connection may hold
/// one upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdBudget {
    pub limit: u64,
    pub reserved: u64,
    pub max_connections: usize,
}

/// The budget for a descriptor limit of `limit`.
pub(crate) fn fd_budget(limit: u64) -> FdBudget {
    let reserved = (limit / 8).clamp(16, 256);
    let max = (limit.saturating_sub(reserved) / 2).max(1);
    FdBudget {
        limit,
        reserved,
        max_connections: usize::try_from(max).unwrap_or(usize::MAX),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the usual container default is a soft
/// 1024 under a much larger hard limit) and returns the limit now in force.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

// ---------------------------------------------------------------- listeners and streams

/// A bound listener: TCP, or a Unix socket whose file is removed when the listener stops.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl Listener {
    /// Binds `addr`. A Unix socket is created with no permission for anyone but the owner and
    /// then given `mode` (default 0600), so no other user can connect in between; a stale
    /// socket file left by a previous run is replaced, any other file is an error. A TCP
    /// socket gets SO_REUSEPORT with `reuse_port` (`server.reuse_port`).
    pub async fn bind(
        addr: &ListenAddr,
        mode: Option<u32>,
        reuse_port: bool,
    ) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => {
                let socket = if a.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                // As std's bind does: a restarted proxy can bind while old connections linger.
                socket.set_reuseaddr(true)?;
                if reuse_port {
                    socket.set_reuseport(true)?;
                }
                socket.bind(*a)?;
                Ok(Listener::Tcp(socket.listen(LISTEN_BACKLOG)?))
            }
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(md) = std::fs::symlink_metadata(path) {
                    if !md.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                // SAFETY: umask only swaps the process's file-creation mask.
                let old = unsafe { libc::umask(0o177) };
                let bound = UnixListener::bind(path);
                unsafe { libc::umask(old) };
                let listener = bound?;
                let mode = mode.unwrap_or(0o600);
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// Where it listens (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(_, p) => Ok(ListenAddr::Unix(p.clone())),
        }
    }

    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }

    /// Stops the kernel from completing new TCP connections to this listener, so that the
    /// connections waiting in its backlog can all be taken before it closes: a connection the
    /// kernel completed after the last accept would be reset at the close, after its client
    /// may have written a request. New SYNs are dropped by a socket filter (classic BPF on the
    /// TCP flags), so a client connecting from now on retries its SYN and is refused once the
    /// listener is closed; the ACKs of handshakes already under way pass, and those connections
    /// complete into the backlog. Whether the filter is on (Linux; TCP only).
    fn refuse_new_connections(&self) -> bool {
        let Listener::Tcp(l) = self else {
            return false;
        };
        refuse_syns(l.as_raw_fd())
    }

    /// Accepts a connection that is already waiting, without waiting for one.
    fn try_accept(&self) -> Option<io::Result<Stream>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match self {
            Listener::Tcp(l) => match l.poll_accept(&mut cx) {
                Poll::Ready(r) => Some(r.map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                })),
                Poll::Pending => None,
            },
            Listener::Unix(l, _) => match l.poll_accept(&mut cx) {
                Poll::Ready(r) => Some(r.map(|(s, _)| Stream::Unix(s))),
                Poll::Pending => None,
            },
        }
    }

    fn close(self) {
        if let Listener::Unix(l, path) = self {
            drop(l);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket filter that drops TCP segments with SYN set and ACK clear (new connections) and
/// passes all others: on a listener the filter sees each segment from its TCP header, whose
/// byte 13 holds the flags.
#[cfg(target_os = "linux")]
fn refuse_syns(fd: std::os::fd::RawFd) -> bool {
    const FLAGS: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut program = [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, FLAGS, 0, 0),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, SYN | ACK, 0, 0),
        // SYN alone: drop (return 0 bytes); anything else: keep it whole.
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, SYN, 0, 1),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, u32::MAX, 0, 0),
    ];
    let filter = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: the kernel copies the program during the call; `filter` points at it and
    // outlives the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(filter).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn refuse_syns(_fd: std::os::fd::RawFd) -> bool {
    false
}

/// An accepted connection, shared between hyper's connection and this module (which writes
/// the 408 after hyper gives up on a head), by reference through readiness.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            Stream::Unix(s) => s.poll_write_ready(cx),
        }
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        unsafe { self.try_read_raw(buf.as_mut_ptr(), buf.len()) }
    }
    /// One `recv` into `len` bytes at `ptr`. A short read (some bytes, fewer than asked) drained
    /// the socket, so it also clears tokio's read readiness, as tokio's own `poll_read` does:
    /// the next read then waits for epoll's next edge instead of costing a `recvfrom` that only
    /// says EAGAIN (one per request before: hyper reads again after parsing a head). Cleared
    /// through `try_io`, which clears only the readiness it saw before the read, so an edge
    /// that arrives meanwhile is kept.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes.
    unsafe fn try_read_raw(&self, ptr: *mut u8, len: usize) -> io::Result<usize> {
        let mut short = None;
        let mut recv = |fd: std::os::fd::RawFd| {
            // SAFETY: the caller's contract; recv writes at most `len` bytes there.
            let n = unsafe { libc::recv(fd, ptr.cast(), len, 0) };
            let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            if n > 0 && n < len {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        };
        let r = match self {
            Stream::Tcp(s) => s.try_io(tokio::io::Interest::READABLE, || recv(s.as_raw_fd())),
            Stream::Unix(s) => s.try_io(tokio::io::Interest::READABLE, || recv(s.as_raw_fd())),
        };
        match short {
            Some(n) => Ok(n),
            None => r,
        }
    }
    /// Reads into `buf`'s unfilled part as it is: `ReadBuf::initialize_unfilled` would zero
    /// hyper's whole spare read buffer before every read (17% of a proxied GET's instructions
    /// under callgrind).
    fn try_read_buf(&self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        // SAFETY: the socket read only writes into these bytes (it never de-initialises any),
        // and only the `n` bytes it reports written are then marked initialised and filled.
        let unfilled = unsafe { buf.unfilled_mut() };
        let n = unsafe { self.try_read_raw(unfilled.as_mut_ptr().cast(), unfilled.len())? };
        // SAFETY: as above: the read initialised exactly `n` bytes of the unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Ok(())
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
        }
    }
    fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write_vectored(bufs),
            Stream::Unix(s) => s.try_write_vectored(bufs),
        }
    }
    fn shutdown_write(&self) {
        let fd = match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        };
        // SAFETY: the fd is open for as long as `self` lives; shutdown does not close it.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    }

    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        })
        .await
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| loop {
                std::task::ready!(self.poll_write_ready(cx))?;
                match self.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return Poll::Ready(other),
                }
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- per-connection state

/// What the serve loop knows about one connection: how many requests are in flight, when the
/// last one ended (idle is "no request in flight", so HTTP/2 PINGs or a trickle of header
/// bytes do not keep a connection open), and whether bytes arrived since.
#[derive(Debug)]
struct ConnState {
    epoch: Instant,
    last_io_ms: AtomicU64,
    in_flight: AtomicUsize,
    bytes_read: AtomicU64,
    read_at_response_end: AtomicU64,
    /// Responses finished so far.
    responses: AtomicU64,
    /// HTTP/1: the connection must close after the current response (the client asked, an
    /// HTTP/1.0 body without a length, `Connection: close` while draining).
    close_after: AtomicBool,
    /// HTTP/1: hyper is reading a request head, so every earlier request was read to its
    /// end (set by [`HeadClock`], cleared when a request is dispatched). hyper stops reading
    /// a body the service dropped unread and closes after the response, with the rest of the
    /// body possibly in its read buffer or the socket: such bytes must never be taken for a
    /// next request, so a connection is taken back from hyper only while this is true.
    reading_head: AtomicBool,
    /// [`QUIET`], and the listener's phase ([`DRAINING`], [`STOPPED`], [`GRACE_OVER`]) as
    /// [`Connections::raise`] sets it.
    events: AtomicU8,
    /// The connection's task, woken when `events` changes.
    waker: AtomicWaker,
    /// HTTP/1, on a listener that allows it: what takes the connection over after the
    /// current response (an accepted CONNECT's tunnel), set through [`Takeover`].
    takeover: TakeoverSlot,
}

#[derive(Default)]
struct TakeoverSlot(std::sync::Mutex<Option<Upgrade>>);

impl TakeoverSlot {
    fn set(&self, run: Option<Upgrade>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = run;
        }
    }
    fn take(&self) -> Option<Upgrade> {
        self.0.lock().ok()?.take()
    }
}

impl std::fmt::Debug for TakeoverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TakeoverSlot")
    }
}

impl ConnState {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            bytes_read: AtomicU64::new(0),
            read_at_response_end: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            close_after: AtomicBool::new(false),
            reading_head: AtomicBool::new(false),
            events: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            takeover: TakeoverSlot::default(),
        }
    }
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }
    fn last_io(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
    }
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
    /// Sets `bits` and wakes the connection's task.
    fn raise(&self, bits: u8) {
        self.events.fetch_or(bits, Ordering::AcqRel);
        self.waker.wake();
    }
    fn phase(&self) -> u8 {
        self.events.load(Ordering::Acquire)
    }
    /// Ready with the events once one in `mask` is set. The waker is registered before the
    /// bits are read, so a [`raise`](Self::raise) in between is not missed.
    fn poll_events(&self, cx: &mut Context<'_>, mask: u8) -> Poll<u8> {
        self.waker.register(cx.waker());
        let events = self.phase();
        if events & mask != 0 {
            Poll::Ready(events)
        } else {
            Poll::Pending
        }
    }
    async fn events(&self, mask: u8) -> u8 {
        std::future::poll_fn(|cx| self.poll_events(cx, mask)).await
    }
    /// Bytes of a next request arrived after the last response ended (or before the first).
    fn head_started(&self) -> bool {
        self.bytes_read.load(Ordering::Relaxed) > self.read_at_response_end.load(Ordering::Relaxed)
    }
}

/// One request in flight on a connection, until its response body ends or is dropped.
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.read_at_response_end
            .store(s.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
        s.touch();
        s.responses.fetch_add(1, Ordering::Relaxed);
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.raise(QUIET);
        }
    }
}

/// What takes a connection over (see [`Takeover`]): given the connection's bytes from the
/// end of the response on, and the listener's stop signal (true once it stops: close
/// gracefully).
pub(crate) type Upgrade =
    Box<dyn FnOnce(Io, watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// In an HTTP/1 request's extensions on a listener served with [`Protocols::takeover`]: lets
/// the service take the connection over once hyper has written its response, as hyper's
/// upgrades do (hyper's own would keep its buffers for the life of the connection: here the
/// connection is served a burst at a time). For a `CONNECT` answered 2xx, which hyper ends
/// the HTTP exchange after; set for anything else, the connection ends after the response.
#[derive(Clone)]
pub(crate) struct Takeover(Arc<ConnState>);

impl Takeover {
    pub(crate) fn set(self, run: Upgrade) {
        self.0.takeover.set(Some(run));
    }
}

/// hyper's timer for one HTTP/1 connection. hyper uses it only for the header-read clock,
/// which it starts each time it begins reading a request head, and it reads a head only
/// once the previous request has been read to its end and answered (its `Reading::Init`):
/// so a clock started after a response says that the connection holds no unread body
/// ([`ConnState::reading_head`]), and wakes the serve loop to take it back. This relies on
/// hyper (1.x `Conn::poll_read_head` is the clock's only user, and runs only in that state);
/// the tests of unread and pipelined bodies in tests/hardening*.rs fail if that changes.
/// Never started, a connection would only stay with hyper until its idle timeout.
struct HeadClock(Arc<ConnState>);

impl HeadClock {
    fn head_started(&self) {
        self.0.reading_head.store(true, Ordering::Relaxed);
        self.0.raise(QUIET);
    }
}

impl hyper::rt::Timer for HeadClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        TokioTimer::new().sleep(duration)
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.head_started();
        TokioTimer::new().sleep_until(deadline)
    }
    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        self.head_started();
        TokioTimer::new().reset(sleep, new_deadline);
    }
    fn now(&self) -> Instant {
        TokioTimer::new().now()
    }
}

/// The connection's bytes as hyper sees them: `prefix` (the bytes read to tell HTTP/2 from
/// HTTP/1, or read past a response) first, then the shared stream; bytes read are counted
/// (for the 408). Also what a [`Takeover`] is given.
pub(crate) struct Io {
    stream: Arc<Stream>,
    prefix: Bytes,
    state: Arc<ConnState>,
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        loop {
            std::task::ready!(self.stream.poll_read_ready(cx))?;
            let before = buf.filled().len();
            match self.stream.try_read_buf(buf) {
                Ok(()) => {
                    let n = buf.filled().len() - before;
                    self.state.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------- the per-request wrapper

/// [`ConnState::events`]: the connection went quiet (no request in flight after a response,
/// or hyper started reading the next head), its own.
const QUIET: u8 = 1;
/// The listener's phases, raised on every connection: SIGTERM seen (the data plane only;
/// `Connection: close`, GOAWAY).
const DRAINING: u8 = 2;
/// The listener has stopped: close connections once idle.
const STOPPED: u8 = 4;
/// `shutdown_grace` ran out: unanswered requests get 503 `draining`.
const GRACE_OVER: u8 = 8;

/// A listener's open connections, so that a phase change reaches each as a bit in its
/// [`ConnState::events`] and a wake-up of its task: a connection waiting for the listener
/// reads one atomic per wake-up, where a watch channel per signal took a lock on each poll
/// (several per request).
struct Connections {
    members: std::sync::Mutex<Members>,
    /// The same phases for what runs outside a connection's task: a takeover (told when the
    /// listener stops) and HTTP/2 requests (each in a task of its own).
    stop: watch::Receiver<bool>,
    grace_over: watch::Receiver<bool>,
}

struct Members {
    phase: u8,
    open: slab::Slab<Arc<ConnState>>,
}

impl Connections {
    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Counts `state` in until the returned [`Member`] drops; it starts in the current phase.
    fn join(self: &Arc<Self>, state: &Arc<ConnState>) -> Member {
        let mut m = self.members();
        state.raise(m.phase);
        let key = m.open.insert(state.clone());
        Member {
            connections: self.clone(),
            key,
        }
    }
    fn raise(&self, phase: u8) {
        let mut m = self.members();
        m.phase |= phase;
        for (_, state) in m.open.iter() {
            state.raise(phase);
        }
    }
}

struct Member {
    connections: Arc<Connections>,
    key: usize,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.connections.members().open.try_remove(self.key);
    }
}

/// Resolves when the flag turns true; never, if its sender is gone first.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The hyper service for one connection: the tower service, with the request counted in
/// flight until its response body ends, `Connection: close` while draining, and `503
/// draining` if the grace runs out first.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    state: Arc<ConnState>,
    connections: Arc<Connections>,
    /// HTTP/1 requests carry a [`Takeover`].
    takeover: bool,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl<S: HttpService> hyper::service::Service<Request<Incoming>> for PerConnection<S> {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.state.clone());
        let version = req.version();
        let http1 = version <= Version::HTTP_11;
        if http1 {
            if !client_keeps_alive(&req) {
                self.state.close_after.store(true, Ordering::Relaxed);
            }
            self.state.reading_head.store(false, Ordering::Relaxed);
            if self.takeover {
                req.extensions_mut().insert(Takeover(self.state.clone()));
            }
        }
        let state = self.state.clone();
        let response = crate::ready::ready_call(self.inner.clone(), req);
        // HTTP/1 requests are polled in the connection's task, which `GRACE_OVER` wakes;
        // HTTP/2 ones run in their own tasks and wait on the channel.
        let mut grace_over = (!http1).then(|| self.connections.grace_over.clone());
        Box::pin(async move {
            let grace = async {
                match &mut grace_over {
                    Some(rx) => wait_true(rx).await,
                    None => {
                        std::future::poll_fn(|_| match state.phase() & GRACE_OVER {
                            0 => Poll::Pending,
                            _ => Poll::Ready(()),
                        })
                        .await
                    }
                }
            };
            let mut resp = tokio::select! {
                biased;
                r = response => match r {
                    Ok(r) => r,
                    Err(e) => match e {},
                },
                () = grace => crate::error::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining",
                    "the proxy is shutting down and server.shutdown_grace ran out before the upstream answered; retry",
                    None,
                ),
            };
            if http1 && state.phase() & DRAINING != 0 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // hyper ends an HTTP/1.0 body of unknown length by closing the connection.
            if http1
                && (has_token(resp.headers(), "close")
                    || (version == Version::HTTP_10
                        && http_body::Body::size_hint(resp.body()).exact().is_none()))
            {
                state.close_after.store(true, Ordering::Relaxed);
            }
            let limit = resp.extensions_mut().remove::<DownloadLimit>();
            Ok(resp.map(|inner| Tracked {
                inner: StallLimited::new(inner, limit),
                guard: Some(guard),
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it ends, and fails if
    /// the upstream's body stalls for the service's `body_idle_timeout`.
    struct Tracked {
        #[pin]
        inner: StallLimited<Body>,
        guard: Option<InFlight>,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let out = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = out {
            this.guard.take();
        }
        out
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------- serving

/// How a listener ends: `draining` turns true first (SIGTERM; never for a listener that does
/// not drain), `stop` resolves when it should stop accepting, then connections get `grace`.
pub(crate) struct Drain<F> {
    pub draining: watch::Receiver<bool>,
    pub stop: F,
    pub grace: Duration,
}

/// What a listener speaks besides HTTP/1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Protocols {
    /// HTTP/2 by prior knowledge (the client's first bytes are its preface).
    pub h2: bool,
    /// HTTP/1 requests may take their connection over ([`Takeover`]).
    pub takeover: bool,
    /// Names the listener in its log lines ("" for the data plane's).
    pub name: &'static str,
}

impl Protocols {
    /// The data plane, admin and emulator listeners.
    pub const HTTP: Protocols = Protocols {
        h2: true,
        takeover: false,
        name: "",
    };
}

/// Built once per listener from `[server]`.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    idle: Duration,
    header_read_timeout: Duration,
    protocols: Protocols,
    /// HTTP/1 connections kept with hyper after going quiet ([`LINGER`]).
    lingering: AtomicUsize,
    /// Lingering connections taken back since the last trim ([`Trim`]).
    lingered: AtomicUsize,
}

impl Builders {
    fn new(cfg: &ServerConfig, protocols: Protocols) -> Self {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            // hyper answers 431 when a request's head does not fit.
            .max_buf_size(cfg.max_header_bytes.max(8192));
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            h1,
            h2,
            idle: cfg.idle_timeout,
            header_read_timeout: cfg.header_read_timeout,
            protocols,
            lingering: AtomicUsize::new(0),
            lingered: AtomicUsize::new(0),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, asks every
/// connection to close once its in-flight requests are answered, and waits up to `grace` for
/// them. Returns whether every connection finished in time.
pub(crate) async fn serve<S>(
    listener: impl Into<Listener>,
    service: S,
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> bool
where
    S: HttpService,
{
    let (_never, draining) = watch::channel(false);
    let drain = Drain {
        draining,
        stop: shutdown,
        grace,
    };
    serve_draining(listener.into(), service, cfg, drain).await
}

/// [`serve`] with a draining phase before the stop (see the module's guarantees).
pub(crate) async fn serve_draining<S, F>(
    listener: Listener,
    service: S,
    cfg: &ServerConfig,
    drain: Drain<F>,
) -> bool
where
    S: HttpService,
    F: Future<Output = ()>,
{
    serve_speaking(listener, service, cfg, drain, Protocols::HTTP).await
}

/// [`serve_draining`] for a listener speaking `protocols`.
pub(crate) async fn serve_speaking<S, F>(
    listener: Listener,
    service: S,
    cfg: &ServerConfig,
    drain: Drain<F>,
    protocols: Protocols,
) -> bool
where
    S: HttpService,
    F: Future<Output = ()>,
{
    let name = protocols.name;
    let builders = Arc::new(Builders::new(cfg, protocols));
    let cap = cfg
        .max_connections
        .unwrap_or_else(|| fd_budget(raise_fd_limit()).max_connections);
    let permits = Arc::new(Semaphore::new(cap));
    let trim = Trim::new(cap, permits.clone(), builders.clone());
    let _trimmer = AbortOnDrop(tokio::spawn(trim.clone().run()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (grace_tx, grace_rx) = watch::channel(false);
    let connections = Arc::new(Connections {
        members: std::sync::Mutex::new(Members {
            phase: 0,
            open: slab::Slab::new(),
        }),
        stop: stop_rx,
        grace_over: grace_rx,
    });
    let mut draining = drain.draining;
    let _draining = AbortOnDrop(tokio::spawn({
        let connections = connections.clone();
        async move {
            wait_true(&mut draining).await;
            connections.raise(DRAINING);
        }
    }));
    // Every connection task holds a sender; `recv` returns None once all have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut accept_log = RateLimited::default();
    let mut cap_log = RateLimited::default();
    let stop = drain.stop;
    tokio::pin!(stop);
    'accept: loop {
        if permits.available_permits() == 0 {
            cap_log.log(|left_out| {
                tracing::warn!(
                    max_connections = cap,
                    similar_left_out = left_out,
                    "{name}connection cap reached (server.max_connections): accepting paused"
                )
            });
        }
        // At the cap, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break 'accept,
            },
            () = &mut stop => break 'accept,
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(stream) => {
                        tokio::spawn(connection(
                            builders.clone(),
                            stream,
                            service.clone(),
                            connections.clone(),
                            permit,
                            alive_tx.clone(),
                        ));
                        trim.opened();
                        break;
                    }
                    Err(e) => {
                        accept_log.log(|left_out| {
                            tracing::warn!(error = %e, similar_left_out = left_out, "{name}accept failed")
                        });
                        // EMFILE and friends: back off instead of spinning.
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(50)) => {}
                            () = &mut stop => break 'accept,
                        }
                    }
                },
                () = &mut stop => break 'accept,
            }
        }
    }
    // Connections the kernel completed but nobody accepted yet would be reset when the
    // listener closes, after their clients may have written a request: take them first,
    // once no new ones can complete (handshakes under way get a moment to).
    if listener.refuse_new_connections() {
        tokio::time::sleep(HANDSHAKES_SETTLE).await;
    }
    while let Ok(permit) = permits.clone().try_acquire_owned() {
        let Some(Ok(stream)) = listener.try_accept() else {
            break;
        };
        tokio::spawn(connection(
            builders.clone(),
            stream,
            service.clone(),
            connections.clone(),
            permit,
            alive_tx.clone(),
        ));
    }
    listener.close();
    connections.raise(STOPPED);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    if tokio::time::timeout(drain.grace, alive_rx.recv())
        .await
        .is_ok()
    {
        return true;
    }
    // Unanswered requests get 503 `draining`; give those answers a moment to be written.
    connections.raise(GRACE_OVER);
    let _ = grace_tx.send(true);
    let _ = tokio::time::timeout(FLUSH_LIMIT, alive_rx.recv()).await;
    false
}

/// After this many connections closed since the most that were open, freed memory is given
/// back to the system.
const TRIM_AFTER_CLOSED: usize = 256;
/// How often [`Trim`] looks.
const TRIM_CHECK: Duration = Duration::from_secs(1);
/// Trimming waits for the count of open connections to settle (a burst closing over a few
/// seconds is trimmed once, at its end), but no longer than this.
const TRIM_WAIT_MAX: Duration = Duration::from_secs(5);

/// Gives the heap freed by a burst of connections back to the system. glibc keeps freed
/// memory in its per-thread arenas (measured: +3 MiB after 5,000 idle HTTP/1 connections
/// closed, +46 MiB after 2,000 HTTP/2 ones, never returned), and only `malloc_trim` returns
/// what lies below an arena's top; other allocators do this themselves.
#[derive(Clone)]
struct Trim {
    cap: usize,
    permits: Arc<Semaphore>,
    /// The most connections open since the last trim.
    peak: Arc<AtomicUsize>,
    /// Its lingering connections: their buffers, freed after the state of connections taken
    /// back meanwhile, leave holes that a burst of them going quiet is trimmed for too.
    builders: Arc<Builders>,
}

impl Trim {
    fn new(cap: usize, permits: Arc<Semaphore>, builders: Arc<Builders>) -> Self {
        Self {
            cap,
            permits,
            peak: Arc::default(),
            builders,
        }
    }
    /// At least [`TRIM_AFTER_CLOSED`] connections lingered since the last trim, and none
    /// lingers now.
    fn lingered_then_quiet(&self) -> bool {
        let b = &self.builders;
        b.lingering.load(Ordering::Acquire) == 0
            && b.lingered.load(Ordering::Relaxed) >= TRIM_AFTER_CLOSED
    }
    fn open(&self) -> usize {
        self.cap.saturating_sub(self.permits.available_permits())
    }
    fn opened(&self) {
        self.peak.fetch_max(self.open(), Ordering::Relaxed);
    }
    async fn run(self) {
        let mut tick = tokio::time::interval(TRIM_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = TrimDue::default();
        loop {
            tick.tick().await;
            let open = self.open();
            let closed = due.check(self.peak.load(Ordering::Relaxed), open, Instant::now());
            if !closed && !self.lingered_then_quiet() {
                continue;
            }
            self.peak.store(open, Ordering::Relaxed);
            self.builders.lingered.store(0, Ordering::Relaxed);
            // It walks every arena under its lock: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    }
}

/// When [`Trim`] trims: once [`TRIM_AFTER_CLOSED`] connections fewer than the peak are open
/// and the count has not changed since the last look (or [`TRIM_WAIT_MAX`] has passed).
#[derive(Debug, Default)]
struct TrimDue {
    last_open: usize,
    since: Option<Instant>,
}

impl TrimDue {
    fn check(&mut self, peak: usize, open: usize, now: Instant) -> bool {
        let settled = open == self.last_open;
        self.last_open = open;
        if peak.saturating_sub(open) < TRIM_AFTER_CLOSED {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if !settled && now.duration_since(since) < TRIM_WAIT_MAX {
            return false;
        }
        self.since = None;
        true
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the kernel.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Aborts a background task when its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A log line at most once per [`LOG_EVERY`], counting the ones left out.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    left_out: u64,
}

impl RateLimited {
    fn log(&mut self, emit: impl FnOnce(u64)) {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.left_out += 1;
            return;
        }
        emit(self.left_out);
        self.left_out = 0;
        self.last = Some(Instant::now());
    }
}

/// Reads the rest of the first bytes after `first` of them are in `buf` (at most the 24 of
/// the HTTP/2 preface, fewer as soon as they differ from it).
async fn sniff(stream: &Stream, mut buf: [u8; 24], mut n: usize) -> io::Result<Bytes> {
    while n < buf.len() && buf[..n] == H2_PREFACE[..n] {
        let k = stream.read_some(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(Bytes::copy_from_slice(&buf[..n]))
}

/// Whether an HTTP/1 request lets the connection stay open after its response (HTTP/1.1
/// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`).
fn client_keeps_alive(req: &Request<Incoming>) -> bool {
    if req.version() == Version::HTTP_10 {
        has_token(req.headers(), "keep-alive")
    } else {
        !has_token(req.headers(), "close")
    }
}

fn has_token(headers: &http::HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

async fn connection<S: HttpService>(
    builders: Arc<Builders>,
    stream: Stream,
    service: S,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
    _alive: mpsc::Sender<()>,
) {
    let stream = Arc::new(stream);
    let state = Arc::new(ConnState::new());
    let _member = connections.join(&state);
    // Boxed, like each burst below, so the task keeps only what waiting needs.
    // (A future moved into a box in the statement that awaits it would still take room in
    // this one: hence the separate statements.)
    let first = Box::pin(first_bytes(&stream, &state, &builders));
    let Some(prefix) = first.await else {
        return;
    };
    state
        .bytes_read
        .store(prefix.len() as u64, Ordering::Relaxed);
    state.touch();
    let svc = PerConnection {
        inner: service,
        state: state.clone(),
        connections: connections.clone(),
        takeover: builders.protocols.takeover,
    };
    if builders.protocols.h2 && prefix[..] == H2_PREFACE[..] {
        let h2 = Box::pin(serve_h2(&builders, &stream, &state, svc, prefix));
        h2.await;
        return;
    }
    // HTTP/1: a hyper connection per burst of requests (boxed, so its buffers and state are
    // freed when the burst ends); between bursts the connection costs this task and the
    // socket. The upstream connection its requests opened is driven here too (one request at
    // a time: it can be the downstream connection's own).
    crate::forward::drive(http1_connection(
        builders,
        &stream,
        &state,
        &connections,
        svc,
        prefix,
    ))
    .await;
}

/// An HTTP/1 connection's bursts, from its first bytes.
async fn http1_connection<S: HttpService>(
    builders: Arc<Builders>,
    stream: &Arc<Stream>,
    state: &Arc<ConnState>,
    connections: &Arc<Connections>,
    mut svc: PerConnection<S>,
    mut prefix: Bytes,
) {
    loop {
        let burst = Box::pin(h1_burst(&builders, stream, state, svc, prefix));
        let (leftover, back) = match burst.await {
            Burst::Resume(leftover, back) => (leftover, back),
            Burst::Over => return,
            Burst::TakenOver(run, io) => {
                // Out of the burst's box (freed with the hyper connection in it): the
                // connection now costs the takeover's state only.
                run(io, connections.stop.clone()).await;
                return;
            }
        };
        svc = back;
        if state.close_after.load(Ordering::Relaxed) {
            stream.shutdown_write();
            return;
        }
        prefix = if leftover.is_empty() {
            match next_request_bytes(stream, state, builders.idle).await {
                Some(b) => b,
                None => return,
            }
        } else {
            // Pipelined bytes hyper had read past the response: the next burst starts with
            // them (and they count as a started head, for the 408).
            let read = state.bytes_read.load(Ordering::Relaxed);
            state.read_at_response_end.store(
                read.saturating_sub(leftover.len() as u64),
                Ordering::Relaxed,
            );
            leftover
        };
    }
}

/// The first bytes of a new connection, enough to tell HTTP/2 from HTTP/1: `None` if none
/// arrive within `idle_timeout` (or soon after the listener stops), or the preface does not
/// complete within `header_read_timeout`. Until then there is no hyper connection.
async fn first_bytes(stream: &Stream, state: &ConnState, builders: &Builders) -> Option<Bytes> {
    let mut buf = [0u8; 24];
    let idle = tokio::time::sleep(builders.idle);
    tokio::pin!(idle);
    let mut stopping = false;
    let first = loop {
        tokio::select! {
            r = stream.read_some(&mut buf) => break r,
            () = &mut idle => return None,
            // A client that connected just before the listener stopped is about to send its
            // request: it gets a moment to, instead of a reset after writing it.
            _ = state.events(STOPPED), if !stopping => {
                stopping = true;
                let soon = tokio::time::Instant::now() + FIRST_REQUEST_AFTER_STOP;
                if soon < idle.deadline() {
                    idle.as_mut().reset(soon);
                }
            }
        }
    };
    let n = match first {
        Ok(n) if n > 0 => n,
        _ => return None,
    };
    let sniffed = tokio::time::timeout(builders.header_read_timeout, sniff(stream, buf, n));
    match sniffed.await {
        Ok(Ok(p)) => Some(p),
        _ => None,
    }
}

/// Waits, idle, for the first bytes of a connection's next request: `None` when the client
/// closes, at `idle_timeout` after the last response, or when the listener stops.
async fn next_request_bytes(stream: &Stream, state: &ConnState, idle: Duration) -> Option<Bytes> {
    let deadline = state.last_io() + idle;
    // Enough for a whole usual head, so hyper parses it without reading again; on the stack
    // only while a read is tried, never while waiting (each idle connection would keep it).
    let read = std::future::poll_fn(|cx| loop {
        std::task::ready!(stream.poll_read_ready(cx))?;
        let mut buf = [0u8; 2048];
        match stream.try_read(&mut buf) {
            Ok(n) => return Poll::Ready(Ok(Bytes::copy_from_slice(&buf[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    });
    tokio::pin!(read);
    let idle_timeout = tokio::time::sleep_until(deadline.into());
    tokio::pin!(idle_timeout);
    let release = tokio::time::sleep(RELEASE_UPSTREAM_AFTER);
    tokio::pin!(release);
    let mut released = false;
    loop {
        tokio::select! {
            // A request that arrives as the listener stops is served (with `Connection: close`).
            biased;
            r = &mut read => return match r {
                Ok(b) if !b.is_empty() => {
                    state.bytes_read.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Some(b)
                }
                _ => None,
            },
            () = &mut idle_timeout => return None,
            _ = state.events(STOPPED) => return None,
            // A client that went quiet does not keep an upstream connection to itself.
            () = &mut release, if !released => {
                released = true;
                crate::forward::release_bound();
            }
        }
    }
}

async fn serve_h2<S: HttpService>(
    builders: &Builders,
    stream: &Arc<Stream>,
    state: &Arc<ConnState>,
    svc: PerConnection<S>,
    prefix: Bytes,
) {
    let io = TokioIo::new(Io {
        stream: stream.clone(),
        prefix,
        state: state.clone(),
    });
    let conn = builders.h2.serve_connection(io, svc);
    tokio::pin!(conn);
    if let (Err(e), _) = drive(conn, state, builders, Mode::Http2).await {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

/// How an HTTP/1 burst ended.
enum Burst<S> {
    /// The client is quiet after a response: the bytes read past it and the service, for
    /// the next burst.
    Resume(Bytes, PerConnection<S>),
    /// The connection is over (closed by either side, an error, a timeout).
    Over,
    /// A [`Takeover`] takes the connection from here.
    TakenOver(Upgrade, Io),
}

/// Serves HTTP/1 requests on a fresh hyper connection until the client goes quiet after a
/// response: then hyper is asked to finish (graceful close, without shutting the socket)
/// and the socket, the service and any bytes read past the response are handed back.
/// `None`: the connection is over (closed by either side, an error, a timeout).
///
/// When: a fresh connection per request costs about 7,000 instructions (callgrind, GET back
/// to back: 84.5-89.5k taken back at once, 78.3k lingering), so up to [`LINGER_MAX`]
/// connections linger ([`drive`]). Letting every connection wait 10 or 100 ms before being
/// taken back fragmented glibc's heap (the small per-connection state lands between buffers
/// still in use): 6.2 / 20 KB per idle connection instead of 1.5; with the cap, and a trim
/// once a burst of lingering connections has gone quiet ([`Trim`]), 1.8 KB (idle-rss.py,
/// 5,000 connections).
async fn h1_burst<S: HttpService>(
    builders: &Builders,
    stream: &Arc<Stream>,
    state: &Arc<ConnState>,
    svc: PerConnection<S>,
    prefix: Bytes,
) -> Burst<S> {
    let io = TokioIo::new(Io {
        stream: stream.clone(),
        prefix,
        state: state.clone(),
    });
    // A builder per burst (a copy of a few fields) for the connection's own timer.
    let mut h1 = builders.h1.clone();
    h1.timer(HeadClock(state.clone()));
    let mut conn = h1.serve_connection(io, svc);
    let (result, reusable) = drive(Pin::new(&mut conn), state, builders, Mode::Http1).await;
    match result {
        Ok(()) if reusable => {
            let parts = conn.into_parts();
            let io = parts.io.into_inner();
            // Copied out: `read_buf` is a view into hyper's whole read buffer.
            let mut leftover = BytesMut::with_capacity(parts.read_buf.len() + io.prefix.len());
            leftover.put_slice(&parts.read_buf);
            leftover.put_slice(&io.prefix);
            // Set for a response hyper did not end the exchange after: not taken.
            state.takeover.set(None);
            Burst::Resume(leftover.freeze(), parts.service)
        }
        Ok(()) => {
            let Some(run) = state.takeover.take() else {
                return Burst::Over;
            };
            // hyper has written the response and stopped: the bytes it read past the
            // request (a TLS ClientHello sent right after the CONNECT) go first.
            let parts = conn.into_parts();
            let io = parts.io.into_inner();
            let mut prefix = BytesMut::with_capacity(parts.read_buf.len() + io.prefix.len());
            prefix.put_slice(&parts.read_buf);
            prefix.put_slice(&io.prefix);
            drop((parts.read_buf, parts.service));
            let io = Io {
                stream: io.stream,
                prefix: prefix.freeze(),
                state: io.state,
            };
            Burst::TakenOver(run, io)
        }
        Err(e) if e.is_timeout() && state.head_started() => {
            drop(conn);
            tracing::debug!("request head not received within server.header_read_timeout: 408");
            let _ = tokio::time::timeout(
                FLUSH_LIMIT,
                stream.write_all(&header_timeout_response(builders.header_read_timeout)),
            )
            .await;
            stream.shutdown_write();
            Burst::Over
        }
        Err(e) => {
            tracing::debug!(error = %e, "connection ended with an error");
            Burst::Over
        }
    }
}

/// `408` with the JSON error body, written by hand: hyper has given up on the connection.
fn header_timeout_response(limit: Duration) -> Vec<u8> {
    let body = serde_json::json!({
        "code": "header_timeout",
        "message": format!(
            "the request headers did not arrive within {} (server.header_read_timeout)",
            humantime::format_duration(limit)
        ),
    })
    .to_string();
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A hyper connection that can be asked to close gracefully, polled to its end.
trait Graceful {
    fn graceful(self: Pin<&mut Self>);
    /// HTTP/1: without shutting the socket down, so it can be taken back.
    fn poll_done(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>>;
}

impl<S: HttpService> Graceful
    for hyper::server::conn::http1::Connection<TokioIo<Io>, PerConnection<S>>
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
    fn poll_done(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.get_mut().poll_without_shutdown(cx)
    }
}

impl<S: HttpService> Graceful
    for hyper::server::conn::http2::Connection<TokioIo<Io>, PerConnection<S>, TokioExecutor>
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
    fn poll_done(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.poll(cx)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Handed back (see [`h1_burst`]) once the client is quiet after a response.
    Http1,
    Http2,
}

/// What [`drive`]'s one timer is set for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The idle deadline (`last_io + idle_timeout`; pushed out while a request is in flight).
    Idle,
    /// The listener stopped while a request head was arriving: look again soon.
    StopRecheck,
    /// A graceful close was asked for: drop the connection if it has not finished.
    Hard,
    /// HTTP/1, lingering ([`LINGER`]): take the connection back if it is quiet.
    Linger,
}

/// A place among the [`LINGER_MAX`] lingering connections of a listener, given back on drop.
struct LingerSlot<'a>(&'a AtomicUsize);

impl<'a> LingerSlot<'a> {
    fn take(count: &'a AtomicUsize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < LINGER_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for LingerSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs one hyper connection to its end: closed gracefully when idle, when the listener
/// stops, or (HTTP/2) when draining starts; dropped when a graceful close does not finish.
/// HTTP/1 is also ended (to be resumed by a fresh connection) once no request is in flight
/// after a response; the `bool` says the connection may be resumed.
///
/// A wake-up (several per request) costs an atomic load for the connection's and the
/// listener's events ([`ConnState::events`]) and nothing for the one timer, which is reset in
/// place for whatever is due next: a `select!` builds its branches' futures again on each
/// pass, and a timer and a watch wait per signal, registered and dropped on each, cost about
/// 5k instructions per GET (callgrind: the connection task outside hyper, 10.0k -> 4.8-7.7k).
async fn drive<C: Graceful + ?Sized>(
    mut conn: Pin<&mut C>,
    state: &ConnState,
    builders: &Builders,
    mode: Mode,
) -> (hyper::Result<()>, bool) {
    let h2 = mode == Mode::Http2;
    let idle = builders.idle;
    let served_before = state.responses.load(Ordering::Relaxed);
    let mut closing = false;
    let mut handing_back = false;
    let mut stop_seen = false;
    let mut linger: Option<LingerSlot<'_>> = None;
    // Quiet after a response, and hyper reading the next head: the connection can be taken
    // back (see [`ConnState::reading_head`]).
    let quiet = || {
        !state.busy()
            && state.responses.load(Ordering::Relaxed) > served_before
            && state.reading_head.load(Ordering::Relaxed)
    };
    let timer = tokio::time::sleep_until((state.last_io() + idle).into());
    tokio::pin!(timer);
    let mut due = Due::Idle;
    loop {
        let mut wanted = GRACE_OVER;
        if !closing {
            if mode == Mode::Http1 {
                wanted |= QUIET;
            }
            if h2 {
                wanted |= DRAINING;
            }
            if !stop_seen {
                wanted |= STOPPED;
            }
        }
        // The graceful close asked for on `close`, and the deadline it gets.
        let mut close: Option<Duration> = None;
        tokio::select! {
            res = std::future::poll_fn(|cx| conn.as_mut().poll_done(cx)) => {
                return (res, handing_back);
            }
            events = state.events(wanted) => {
                if events & GRACE_OVER != 0 {
                    // The 503s were produced; let them be written, then drop the rest.
                    let _ = tokio::time::timeout(
                        FLUSH_LIMIT,
                        std::future::poll_fn(|cx| conn.as_mut().poll_done(cx)),
                    )
                    .await;
                    return (Ok(()), false);
                }
                if wanted & events & QUIET != 0 {
                    // Cleared before looking, so a request ending after the look wakes again.
                    state.events.fetch_and(!QUIET, Ordering::AcqRel);
                    if linger.is_none() && quiet() {
                        linger = if idle > LINGER {
                            LingerSlot::take(&builders.lingering)
                        } else {
                            None
                        };
                        if linger.is_some() {
                            due = Due::Linger;
                            timer.as_mut().reset(tokio::time::Instant::now() + LINGER);
                        } else {
                            handing_back = true;
                            // Bounds a client that does not read the rest of the response.
                            close = Some(idle);
                        }
                    }
                }
                if wanted & events & DRAINING != 0 {
                    close = Some(CLOSE_LIMIT);
                }
                if wanted & events & STOPPED != 0 && close.is_none() {
                    stop_seen = true;
                    // HTTP/1: a request whose head is arriving is answered first (hyper would
                    // drop it with the connection); it is dispatched soon or cut by the header
                    // timeout.
                    if h2 || state.busy() || !state.head_started() {
                        close = Some(CLOSE_LIMIT);
                    } else {
                        due = Due::StopRecheck;
                        timer.as_mut().reset(tokio::time::Instant::now() + STOP_RECHECK);
                    }
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                let idle_over = !state.busy() && now.duration_since(state.last_io()) >= idle;
                match due {
                    Due::Idle if idle_over => close = Some(CLOSE_LIMIT),
                    Due::StopRecheck if state.busy() || !state.head_started() || idle_over => {
                        close = Some(CLOSE_LIMIT);
                    }
                    Due::Idle => {
                        let next = if state.busy() { now } else { state.last_io() } + idle;
                        timer.as_mut().reset(next.into());
                    }
                    Due::StopRecheck => timer.as_mut().reset((now + STOP_RECHECK).into()),
                    // Requests still in flight keep their connection (the grace bounds them).
                    Due::Hard if !state.busy() => {
                        tracing::debug!("connection dropped: its graceful close did not finish in time");
                        return (Ok(()), false);
                    }
                    Due::Hard => timer.as_mut().reset((now + CLOSE_LIMIT).into()),
                    Due::Linger if quiet() => {
                        linger = None;
                        builders.lingered.fetch_add(1, Ordering::Relaxed);
                        handing_back = true;
                        close = Some(idle);
                    }
                    Due::Linger => timer.as_mut().reset((now + LINGER).into()),
                }
            }
        }
        if let Some(limit) = close {
            conn.as_mut().graceful();
            closing = true;
            due = Due::Hard;
            timer.as_mut().reset(tokio::time::Instant::now() + limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once a listener refuses new connections, a connect is neither completed nor reset: its
    /// SYN goes unanswered until the listener closes, and then it is refused. A connection the
    /// kernel completed before is still in the backlog and carries data both ways.
    #[tokio::test]
    async fn a_listener_refusing_new_connections_keeps_its_backlog_and_refuses_after_close() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = Listener::from(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let Ok(ListenAddr::Tcp(addr)) = listener.local_addr() else {
            panic!("a TCP listener");
        };
        let mut early = TcpStream::connect(addr).await.unwrap();
        assert!(
            listener.refuse_new_connections(),
            "the socket filter was refused"
        );
        let late = tokio::spawn(TcpStream::connect(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !late.is_finished(),
            "a connect completed or failed after new ones were refused"
        );
        let Some(Ok(Stream::Tcp(mut accepted))) = listener.try_accept() else {
            panic!("the connection completed before the filter was not in the backlog");
        };
        early.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");
        accepted.write_all(b"answer!").await.unwrap();
        early.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answer!");
        assert!(
            listener.try_accept().is_none(),
            "only the early connection was waiting"
        );
        listener.close();
        let late = tokio::time::timeout(Duration::from_secs(5), late)
            .await
            .expect("the late connect was still waiting 5 s after the listener closed")
            .unwrap();
        assert_eq!(
            late.map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
    }

    /// A short read clears the read readiness (no EAGAIN read after it), and bytes that arrive
    /// later still wake the reader: the cleared readiness is never an edge that was lost.
    #[tokio::test]
    async fn short_read_clears_readiness_and_later_bytes_still_wake() {
        use tokio::io::AsyncWriteExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let stream = Stream::Tcp(listener.accept().await.unwrap().0);
        let mut buf = [0u8; 64];
        for round in 0..50u8 {
            client.write_all(&[round; 10]).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read_some(&mut buf))
                .await
                .expect("bytes written after a short read must wake the reader")
                .unwrap();
            assert_eq!(&buf[..n], &[round; 10][..n]);
            assert!(n > 0);
            // After the short read the socket counts as not ready: polling does not report
            // it readable until new bytes arrive.
            let ready = std::future::poll_fn(|cx| Poll::Ready(stream.poll_read_ready(cx))).await;
            assert!(
                ready.is_pending(),
                "round {round}: readiness kept after a short read"
            );
            // The rest of a split write, if any, arrives on the next read.
            let mut got = n;
            while got < 10 {
                got += stream.read_some(&mut buf).await.unwrap();
            }
        }
    }

    #[test]
    fn fd_budget_keeps_a_reserve_and_room_for_upstreams() {
        let b = fd_budget(1024);
        assert_eq!(b.reserved, 128);
        assert_eq!(b.max_connections, 448);
        let small = fd_budget(64);
        assert_eq!((small.reserved, small.max_connections), (16, 24));
        assert_eq!(fd_budget(1 << 20).reserved, 256);
        assert_eq!(fd_budget(0).max_connections, 1);
    }

    #[tokio::test]
    async fn reuse_port_lets_a_second_listener_share_the_port_and_only_then() {
        let any = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
        let first = Listener::bind(&any, None, true).await.unwrap();
        let addr = first.local_addr().unwrap();
        let second = Listener::bind(&addr, None, true).await;
        assert!(second.is_ok(), "with reuse_port on both: {second:?}");
        let without = Listener::bind(&addr, None, false).await;
        assert_eq!(
            without.unwrap_err().kind(),
            io::ErrorKind::AddrInUse,
            "a listener without reuse_port must not share the port"
        );
    }

    #[test]
    fn at_most_linger_max_connections_linger_and_a_place_is_given_back_on_drop() {
        let count = AtomicUsize::new(0);
        let slots: Vec<_> = (0..LINGER_MAX)
            .map(|_| LingerSlot::take(&count).expect("a place below the cap"))
            .collect();
        assert!(LingerSlot::take(&count).is_none());
        assert_eq!(count.load(Ordering::Relaxed), LINGER_MAX);
        drop(slots);
        assert_eq!(count.load(Ordering::Relaxed), 0);
        assert!(LingerSlot::take(&count).is_some());
    }

    #[test]
    fn trim_waits_for_a_burst_to_finish_closing() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut due = TrimDue::default();
        // Open connections: 5,000, closing over three looks, then settled at 0.
        assert!(!due.check(5000, 5000, at(0)));
        assert!(!due.check(5000, 3000, at(1)));
        assert!(!due.check(5000, 200, at(2)));
        assert!(!due.check(5000, 0, at(3)));
        assert!(due.check(5000, 0, at(4)));
        // Trimmed: the peak is now 0; fewer than TRIM_AFTER_CLOSED closing is not a burst.
        assert!(!due.check(0, 0, at(5)));
        assert!(!due.check(300, 100, at(6)));
        assert!(!due.check(300, 100, at(7)));
        // Steady churn never settles: trimmed once TRIM_WAIT_MAX has passed.
        let mut due = TrimDue::default();
        let trims: Vec<u64> = (0..12)
            .filter(|&s| due.check(2000, 1000 + (s as usize % 2), at(s)))
            .collect();
        assert_eq!(trims, [5, 11]);
    }

    #[test]
    fn rate_limited_log_counts_what_it_leaves_out() {
        let mut r = RateLimited::default();
        let mut seen = Vec::new();
        for _ in 0..5 {
            r.log(|n| seen.push(n));
        }
        assert_eq!(seen, vec![0]);
        assert_eq!(r.left_out, 4);
    }

    #[test]
    fn the_408_is_json_and_closes() {
        let r = String::from_utf8(header_timeout_response(Duration::from_secs(2))).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 "));
        assert!(head.contains("connection: close"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "header_timeout");
        assert!(v["message"].as_str().unwrap().contains("2s"));
    }
}
