//! Request tracing: a request id on every request and response, one log line per request, and
//! the request metrics.
//!
//! Guarantees: an incoming `X-Request-Id` is kept when it is 1 to 128 visible ASCII characters
//! with no quote or backslash (else one is generated and the line says `request_id_replaced`),
//! forwarded upstream and returned on the response; one `access` log line per request with
//! method, service, path, status, upstream latency and request id. Every value that came from
//! the client is quoted and escaped in text logs, so a request id or path cannot forge
//! `key=value` pairs. No header values other than the request id are logged, so
//! `Scp-Signature` and credentials never reach the log.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use tower::{Layer, Service};

use crate::error::{ErrorCode, ServedBy};
use crate::forward::UpstreamLatency;
use crate::metrics::{CodeLabel, Metrics};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The listener a request came in on, in its extensions (absent: the plain listener); the
/// access line's `mode` and the request metric's `listener` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(pub &'static str);

impl Mode {
    pub const PLAIN: Mode = Mode("plain");
    pub const FORWARD: Mode = Mode("forward");
}

#[derive(Clone, Debug)]
pub(crate) struct TraceLayer {
    metrics: Metrics,
}

impl TraceLayer {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Trace<S> {
    metrics: Metrics,
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Room for what the layers below add (request id, traceparent, version, five Scp-*
        // headers): hyper sizes the map to the client's headers, and each insert past that
        // would grow it again (three growths per proxied GET).
        req.headers_mut().reserve(8);
        let mut sent = req.headers().get_all(&X_REQUEST_ID).iter();
        let kept = match (sent.next(), sent.next()) {
            (Some(v), None) if is_acceptable_id(v.as_bytes()) => Ok(v.clone()),
            (sent, _) => Err(sent.is_some()),
        };
        let (id, id_replaced) = match kept {
            Ok(id) => (id, false),
            Err(replaced) => {
                let id = new_request_id();
                // `insert` also drops a second (or third) client value.
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                (id, replaced)
            }
        };
        self.metrics.in_flight.inc();
        // Cheap clones (reference counts): the client's method and target, for the log line.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mode = req
            .extensions()
            .get::<Mode>()
            .copied()
            .unwrap_or(Mode::PLAIN);
        // Before the inner call: layers below may start work (even the upstream request) in it.
        let started = Instant::now();
        TraceFuture {
            inner: self.inner.call(req),
            state: Some(State {
                metrics: self.metrics.clone(),
                method,
                uri,
                mode,
                id,
                id_replaced,
                started,
                answered: false,
            }),
        }
    }
}

struct State {
    metrics: Metrics,
    method: Method,
    uri: Uri,
    mode: Mode,
    id: HeaderValue,
    /// The client sent an id that was not acceptable; a generated one replaced it.
    id_replaced: bool,
    started: Instant,
    answered: bool,
}

impl Drop for State {
    /// Also runs when hyper drops the request because the client went away, so the in-flight
    /// gauge never drifts upward, and such a request is counted as `client_aborted` (an h2
    /// client's RST_STREAM can drop the request before its body error reaches the stack).
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        if !self.answered {
            self.metrics
                .rejections
                .get_or_create(&CodeLabel {
                    code: "client_aborted",
                })
                .inc();
            tracing::debug!(
                target: "access",
                request_id = id_str(&self.id),
                method = self.method.as_str(),
                path = self.uri.path(),
                "client went away before the response"
            );
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        state: Option<State>,
    }
}

impl<F, RB, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        let Some(mut state) = this.state.take() else {
            return Poll::Ready(out);
        };
        state.answered = true;
        let Ok(mut resp) = out else {
            return Poll::Ready(out);
        };
        let status = resp.status();
        let service = resp.extensions().get::<ServedBy>().map(|s| s.0);
        let latency = resp.extensions().get::<UpstreamLatency>().map(|l| l.0);
        if let Some(code) = resp.extensions().get::<ErrorCode>() {
            state
                .metrics
                .rejections
                .get_or_create(&CodeLabel { code: code.0 })
                .inc();
        }
        // Latency only for a routed request (one that reached a service).
        state.metrics.count_request(
            service.unwrap_or("-"),
            &state.method,
            status.as_u16(),
            state.mode.0,
            service.and(latency),
        );
        if tracing::enabled!(target: "access", tracing::Level::INFO) {
            let error_code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
            let line = crate::logging::AccessLine {
                request_id: state.id.as_bytes(),
                mode: state.mode.0,
                request_id_replaced: state.id_replaced,
                method: state.method.as_str(),
                service: service.unwrap_or("-"),
                path: state.uri.path(),
                status: status.as_u16(),
                upstream: latency,
                total: state.started.elapsed(),
                error_code,
                trace_id: resp
                    .extensions()
                    .get::<crate::layers::tracecontext::TraceId>()
                    .copied(),
            };
            // The logging module formats the line without tracing's field machinery; without
            // it (tests, ANSI terminals) the event goes through tracing as before.
            if !crate::logging::write_access(&line) {
                // `&str` values are quoted and escaped by the text format; `%` ones are not.
                tracing::info!(
                    target: "access",
                    request_id = id_str(&state.id),
                    request_id_replaced = state.id_replaced.then_some(true),
                    mode = line.mode,
                    method = line.method,
                    service = line.service,
                    path = line.path,
                    status = line.status,
                    upstream_ms = latency.map(|l| tracing::field::display(Millis(l))),
                    total_ms = %Millis(line.total),
                    error_code,
                    trace_id = line.trace_id.map(tracing::field::display),
                );
            }
        }
        resp.headers_mut().insert(X_REQUEST_ID, state.id.clone());
        Poll::Ready(Ok(resp))
    }
}

/// Visible ASCII, 1 to 128 bytes, and nothing that quotes or escapes in a log line.
pub(crate) fn is_acceptable_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'))
}

/// The id as text; ids are checked or generated ASCII.
fn id_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("-")
}

/// Milliseconds with three decimals, always (`12.000`), for the tracing fallback.
struct Millis(std::time::Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = self.0.as_micros();
        write!(f, "{}.{:03}", us / 1000, us % 1000)
    }
}

/// A unique id: a random per-process prefix and a counter.
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish() as u32
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix:08x}-{n:012x}` by hand: `format!` cost 2% of a request's instructions.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [b'-'; 21];
    for i in 0..8 {
        b[i] = HEX[(prefix >> (28 - 4 * i) & 0xf) as usize];
    }
    for i in 0..12 {
        b[9 + i] = HEX[(n >> (44 - 4 * i) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&b).unwrap_or_else(|_| unreachable!("hex is a valid header value"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn request_ids_kept_only_when_safe() {
        for ok in ["abc", "0123-abcd_ef.GH:1/2+3=4", &"a".repeat(128)] {
            assert!(super::is_acceptable_id(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "abc def",
            "abc status=200 service=\"iam\"",
            "a\"b",
            "a'b",
            "a\\b",
            "a\tb",
            "caf\u{e9}",
            &"a".repeat(129),
        ] {
            assert!(!super::is_acceptable_id(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn fallback_latency_has_fixed_precision() {
        for (d, text) in [
            (Duration::from_millis(12), "12.000"),
            (Duration::from_nanos(1_234_567), "1.234"),
            (Duration::from_nanos(400), "0.000"),
            (Duration::from_secs(2), "2000.000"),
        ] {
            assert_eq!(super::Millis(d).to_string(), text);
        }
    }

    #[test]
    fn request_ids_are_unique() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 21);
    }
}
