//! Large streamed bodies for transfer tests: a body of any length generated as it is read
//! ([`PatternBody`]), a checker that compares what arrives with it byte for byte as it
//! arrives ([`PatternCheck`]), and an upstream that streams both ways ([`StreamingUpstream`]).
//! Nothing holds a whole body, so a test can move gigabytes in constant memory.
//!
//! The pattern: 64 KiB blocks, each a fixed pseudo-random block whose first 8 bytes are
//! replaced by the block's index. Comparing against it catches lost, added, reordered and
//! altered bytes (what a checksum would, and where), at memcmp speed even in a debug build.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The pattern's block size, also the size of each frame [`PatternBody`] yields.
pub const BLOCK: usize = 64 * 1024;

fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        // xorshift64*: fixed seed, so every process derives the same block.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..BLOCK / 8)
            .flat_map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
            })
            .collect()
    })
}

/// Block `k` of the pattern.
fn block(k: u64) -> BytesMut {
    let mut b = BytesMut::from(base());
    b[..8].copy_from_slice(&k.to_le_bytes());
    b
}

/// `len` bytes of the pattern, one 64 KiB frame at a time, made as they are read. With
/// `exact`, the size hint is exact (an HTTP/1 sender sets content-length); without, it is
/// unknown (chunked).
#[derive(Debug)]
pub struct PatternBody {
    sent: u64,
    len: u64,
    exact: bool,
}

impl PatternBody {
    pub fn new(len: u64, exact: bool) -> Self {
        Self {
            sent: 0,
            len,
            exact,
        }
    }

    /// As the tests' client body ([`super::Body`]).
    pub fn boxed(len: u64, exact: bool) -> super::Body {
        Self::new(len, exact).map_err(|e| match e {}).boxed()
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == self.len {
            return Poll::Ready(None);
        }
        let k = self.sent / BLOCK as u64;
        let n = (self.len - self.sent).min(BLOCK as u64) as usize;
        let mut b = block(k);
        b.truncate(n);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(b.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.len - self.sent)
        } else {
            SizeHint::default()
        }
    }
}

/// Compares a stream, fed in pieces of any size, with the pattern.
#[derive(Debug, Default)]
pub struct PatternCheck {
    /// Bytes fed so far.
    pub len: u64,
    /// The offset of the first byte that differed, if any.
    pub first_mismatch: Option<u64>,
}

impl PatternCheck {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let k = self.len / BLOCK as u64;
            let at = (self.len % BLOCK as u64) as usize;
            let n = data.len().min(BLOCK - at);
            if self.first_mismatch.is_none() {
                let index = k.to_le_bytes();
                let piece = &data[..n];
                // Bytes 0..8 of a block are its index, the rest the base block.
                let head = at.min(8);
                let split = (8 - head).min(n);
                let ok = piece[..split] == index[head..head + split]
                    && piece[split..] == base()[at + split..at + n];
                if !ok {
                    // Only now byte by byte, to name the first one that differs.
                    let expected = index[head..head + split]
                        .iter()
                        .chain(&base()[at + split..at + n]);
                    let i = piece.iter().zip(expected).position(|(a, b)| a != b);
                    self.first_mismatch = Some(self.len + i.unwrap_or(0) as u64);
                }
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }

    /// Exactly `len` bytes of the pattern arrived.
    pub fn intact(&self, len: u64) -> bool {
        self.len == len && self.first_mismatch.is_none()
    }
}

/// Reads `body` to its end through a [`PatternCheck`]; the error, if reading failed.
pub async fn check_body<B>(mut body: B) -> (PatternCheck, Option<String>)
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut check = PatternCheck::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    check.feed(d);
                }
            }
            Err(e) => return (check, Some(e.to_string())),
        }
    }
    (check, None)
}

/// A plain-HTTP upstream on 127.0.0.1:0 that streams: `GET /v1/download?bytes=N` answers N
/// bytes of the pattern (content-length; `&chunked=1`: chunked); any other request has its
/// body checked against the pattern and is answered
/// `{"bytes":N,"intact":BOOL,"chunked":BOOL,"version":"HTTP/1.1","error":...}`.
#[derive(Clone, Debug)]
pub struct StreamingUpstream {
    pub addr: SocketAddr,
}

impl StreamingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req| async move {
                        Ok::<_, Infallible>(Self::handle(req).await)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr }
    }

    /// The same over TLS with `acceptor` (its ALPN decides HTTP/2 or HTTP/1.1); the base URL
    /// is then `https://localhost:PORT`.
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req| async move {
                        Ok::<_, Infallible>(Self::handle(req).await)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn handle(
        req: Request<Incoming>,
    ) -> Response<http_body_util::Either<PatternBody, http_body_util::Full<Bytes>>> {
        use http_body_util::Either;
        let (parts, body) = req.into_parts();
        if parts.uri.path() == "/v1/download" {
            let q = parts.uri.query().unwrap_or("");
            let len = q
                .split('&')
                .find_map(|kv| kv.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunked = q.split('&').any(|kv| kv == "chunked=1");
            return Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Either::Left(PatternBody::new(len, !chunked)))
                .unwrap();
        }
        let chunked = parts.headers.contains_key(http::header::TRANSFER_ENCODING);
        let version = format!("{:?}", parts.version);
        let (check, error) = check_body(body).await;
        let answer = serde_json::json!({
            "bytes": check.len,
            "intact": check.first_mismatch.is_none(),
            "first_mismatch": check.first_mismatch,
            "chunked": chunked,
            "version": version,
            "error": error,
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Either::Right(http_body_util::Full::new(Bytes::from(
                answer.to_string(),
            ))))
            .unwrap()
    }
}

/// A process's memory figure from /proc/PID/status (`VmHWM`, `VmRSS`, ...), in KiB.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// VmRSS of `pid` in bytes once it has stopped moving: unchanged for [`RSS_QUIET`], longer
/// than the proxy's trim check (1 s), so memory a burst of lingering connections freed has
/// been given back before it is read; bounded at 10 s. For per-connection memory measured
/// through the real binary.
pub async fn settled_rss_bytes(pid: i32) -> u64 {
    let rss = || status_kib(pid, "VmRSS") * 1024;
    let mut last = rss();
    let mut since = std::time::Instant::now();
    let settled = super::poll_until(std::time::Duration::from_secs(10), || {
        let now = rss();
        if now != last {
            last = now;
            since = std::time::Instant::now();
        }
        let quiet = since.elapsed() >= RSS_QUIET;
        async move { quiet.then_some(now) }
    })
    .await;
    settled.unwrap_or_else(rss)
}

/// How long [`settled_rss_bytes`] wants VmRSS unchanged. A read 10 ms after the last
/// connection went quiet saw the lingering connections' buffers not yet trimmed (CI: 6,212 B
/// per idle forward connection instead of about 1,700).
pub const RSS_QUIET: std::time::Duration = std::time::Duration::from_millis(1500);
