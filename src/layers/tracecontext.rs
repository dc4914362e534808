//! W3C trace context: accept `traceparent`/`tracestate`, forward them, start a trace when none
//! was sent, and (with `[telemetry] otlp_endpoint`) export one span per request.
//!
//! Guarantees: a valid incoming `traceparent` keeps its trace id and flags, and goes upstream
//! with the proxy's own span id as the parent (the proxy is one hop); `tracestate` passes
//! unchanged with it; an invalid or absent `traceparent` is replaced by a new trace (random
//! trace and span ids, flags `00`) and any `tracestate` without a valid parent is dropped, as
//! the W3C spec says. The trace id is in the request's and the response's extensions
//! ([`TraceId`]) for the access and audit lines. With an exporter, sampling follows the
//! parent (a caller's `sampled` flag decides; a trace the proxy starts is sampled, flags `01`),
//! and each sampled request ends in one SERVER span whose id is the parent sent upstream;
//! without one the proxy records nothing and starts traces unsampled. Nothing else is changed.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use tower::{Layer, Service};

use crate::error::{ErrorCode, ServedBy};
use crate::route::Routes;
use crate::target::Target;
pub use crate::telemetry::TraceId;
use crate::telemetry::{push_hex, Attr, Exporter, SpanRecord};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The parsed parts of a `traceparent` (version 00, or a later one read as 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses `traceparent` as W3C Trace Context level 1 says (lower-case hex; all-zero ids and
/// version `ff` invalid; a later version may carry more fields after the flags).
pub fn parse(v: &str) -> Option<Parent> {
    // Version 00 is 55 bytes; a later version's extra fields are bounded too.
    if v.len() > 256 {
        return None;
    }
    let mut it = v.trim().split('-');
    let version: [u8; 1] = hex(it.next()?)?;
    let trace_id: [u8; 16] = hex(it.next()?)?;
    let span_id: [u8; 8] = hex(it.next()?)?;
    let flags: [u8; 1] = hex(it.next()?)?;
    let extra = it.next().is_some();
    if version[0] == 0xff || (version[0] == 0 && extra) {
        return None;
    }
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        flags: flags[0],
    })
}

impl Parent {
    pub fn header_value(&self) -> HeaderValue {
        let mut b = Vec::with_capacity(55);
        b.extend_from_slice(b"00-");
        push_hex(&mut b, &self.trace_id);
        b.push(b'-');
        push_hex(&mut b, &self.span_id);
        b.push(b'-');
        push_hex(&mut b, &[self.flags]);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(b))
            .unwrap_or_else(|_| unreachable!("hex is a valid header value"))
    }
}

/// Ids for traces and spans (unique and unpredictable enough; not secrets): SplitMix64 over
/// a per-thread state seeded once, instead of a keyed hash and a clock read per id.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let z = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A thread's first state: the process's random hash keys (distinct per thread), a process
/// counter and the clock.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = random_u64().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&new_span_id());
    id
}

/// The most `tracestate` bytes (all its header lines together) passed on: the W3C limit for
/// what a vendor must propagate.
pub const MAX_TRACESTATE: usize = 512;
/// The most list members the W3C spec allows.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Whether the request's `tracestate` (all lines) may go upstream: at most
/// [`MAX_TRACESTATE`] bytes and 32 members, each `key=value` of visible ASCII. Anything else
/// is dropped whole (a partial list would misattribute vendors' state).
fn tracestate_ok(h: &http::HeaderMap) -> bool {
    let mut bytes = 0;
    let mut members = 0;
    for v in h.get_all(&TRACESTATE) {
        bytes += v.len();
        if bytes > MAX_TRACESTATE {
            return false;
        }
        for m in v.as_bytes().split(|&b| b == b',') {
            let m = m.trim_ascii();
            if m.is_empty() {
                continue;
            }
            members += 1;
            let Some(eq) = m.iter().position(|&b| b == b'=') else {
                return false;
            };
            let (key, value) = (&m[..eq], &m[eq + 1..]);
            if members > MAX_TRACESTATE_MEMBERS
                || key.is_empty()
                || key.len() > 256
                || value.is_empty()
                || value.len() > 256
                || !key.iter().all(|&b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
                })
                || !value
                    .iter()
                    .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
            {
                return false;
            }
        }
    }
    true
}

/// What goes upstream for `incoming`: the same trace with the proxy's span as the parent, or
/// a new trace (sampled when `sample_new`); the bool says whether `tracestate` may stay.
pub fn next_hop(incoming: Option<&str>, sample_new: bool) -> (Parent, bool) {
    match incoming.and_then(parse) {
        Some(p) => (
            Parent {
                span_id: new_span_id(),
                ..p
            },
            true,
        ),
        None => (
            Parent {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                flags: u8::from(sample_new),
            },
            false,
        ),
    }
}

/// What span export needs beside the exporter: the routes, to name the operation.
#[derive(Clone, Debug)]
pub struct SpanExport {
    pub exporter: Exporter,
    pub routes: Routes<Target>,
}

#[derive(Clone, Debug, Default)]
pub struct TraceContextLayer {
    export: Option<SpanExport>,
}

impl TraceContextLayer {
    /// `export`: where spans go, when `[telemetry] otlp_endpoint` is set.
    pub fn new(export: Option<SpanExport>) -> Self {
        Self { export }
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceContext {
            export: self.export.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TraceContext<S> {
    export: Option<SpanExport>,
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for TraceContext<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = TraceContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut sent = req.headers().get_all(&TRACEPARENT).iter();
        // Two traceparent headers are as good as none.
        let incoming = match (sent.next(), sent.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        };
        let caller = incoming.and_then(parse);
        let (parent, keep_state) = next_hop(incoming, self.export.is_some());
        let keep_state = keep_state && tracestate_ok(req.headers());
        let span = match &self.export {
            Some(export) if parent.flags & 1 == 1 => Some(Box::new(PendingSpan {
                export: export.clone(),
                parent,
                caller_span: caller.map(|c| c.span_id),
                start: SystemTime::now(),
                method: req.method().clone(),
                uri: req.uri().clone(),
                request_id: req
                    .headers()
                    .get(crate::layers::trace::X_REQUEST_ID)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            })),
            _ => None,
        };
        let h = req.headers_mut();
        h.insert(TRACEPARENT, parent.header_value());
        if !keep_state {
            h.remove(TRACESTATE);
        }
        let id = TraceId(parent.trace_id);
        req.extensions_mut().insert(id);
        TraceContextFuture {
            inner: self.inner.call(req),
            id,
            span,
        }
    }
}

/// A sampled request's span until its answer.
struct PendingSpan {
    export: SpanExport,
    parent: Parent,
    caller_span: Option<[u8; 8]>,
    start: SystemTime,
    method: Method,
    uri: Uri,
    request_id: Option<String>,
}

impl PendingSpan {
    fn finish<RB>(self, resp: &Response<RB>) {
        let ext = resp.extensions();
        let target = ext
            .get::<ServedBy>()
            .and_then(|s| self.export.routes.get(s.0));
        let name =
            crate::layers::audit::operation(target, &self.export.routes, &self.method, &self.uri);
        let status = resp.status().as_u16();
        let mut attributes = vec![
            ("http.request.method", Attr::Str(self.method.to_string())),
            ("scp_auth_proxy.operation", Attr::Str(name.clone())),
            ("http.response.status_code", Attr::Int(i64::from(status))),
        ];
        if let Some(t) = target {
            attributes.push(("scp.service", Attr::Str(t.name().to_owned())));
        }
        if let Some(c) = ext.get::<ErrorCode>() {
            attributes.push(("scp_auth_proxy.error_code", Attr::Str(c.0.to_owned())));
        }
        if let Some(id) = self.request_id {
            attributes.push(("scp_auth_proxy.request_id", Attr::Str(id)));
        }
        self.export.exporter.export(SpanRecord {
            trace_id: self.parent.trace_id,
            span_id: self.parent.span_id,
            parent_span_id: self.caller_span,
            name,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error: status >= 500,
        });
    }
}

pin_project_lite::pin_project! {
    pub struct TraceContextFuture<F> {
        #[pin]
        inner: F,
        id: TraceId,
        // Boxed: only sampled requests with an exporter pay for it.
        span: Option<Box<PendingSpan>>,
    }
}

impl<F, RB, E> Future for TraceContextFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &mut out {
            resp.extensions_mut().insert(*this.id);
            if let Some(span) = this.span.take() {
                span.finish(resp);
            }
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_ids(n: usize) -> Vec<[u8; 16]> {
        (0..n).map(|_| new_trace_id()).collect()
    }

    /// Ids from one thread and from another are all distinct, and no id is all zeros.
    #[test]
    fn ids_are_unique_within_and_across_threads() {
        let mut all = trace_ids(10_000);
        all.extend(std::thread::spawn(|| trace_ids(10_000)).join().unwrap());
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        let halves: std::collections::HashSet<_> = all.iter().map(|id| &id[..8]).collect();
        assert_eq!(halves.len(), all.len());
        assert!(all.iter().all(|id| id[8..] != [0; 8]));
    }

    #[test]
    fn trace_id_displays_as_its_hex() {
        let id = TraceId(new_trace_id());
        let mut hex = Vec::new();
        id.write_hex(&mut hex);
        assert_eq!(id.to_string().as_bytes(), hex.as_slice());
        assert_eq!(
            TraceId(*b"\x00\x01\xab\xff0123456789ab").to_string(),
            "0001abff303132333435363738396162"
        );
    }

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example_and_refuses_bad_ones() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(
            TraceId(p.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(p.flags, 1);
        assert_eq!(p.header_value(), SAMPLE);
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // A later version may add fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }

    #[test]
    fn the_next_hop_keeps_the_trace_and_changes_the_parent() {
        let (p, keep) = next_hop(Some(SAMPLE), false);
        assert!(keep);
        let orig = parse(SAMPLE).unwrap();
        assert_eq!((p.trace_id, p.flags), (orig.trace_id, orig.flags));
        assert_ne!(p.span_id, orig.span_id);
        let (a, keep) = next_hop(None, false);
        let (b, _) = next_hop(Some("garbage"), true);
        assert!(!keep);
        // A trace the proxy starts is sampled only when it exports spans.
        assert_eq!((a.flags, b.flags), (0, 1));
        assert_ne!(a.trace_id, b.trace_id);
        assert!(parse(a.header_value().to_str().unwrap()).is_some());
    }

    #[test]
    fn tracestate_is_bounded_and_checked() {
        let ok = |vals: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in vals {
                h.append(TRACESTATE, HeaderValue::from_str(v).unwrap());
            }
            tracestate_ok(&h)
        };
        assert!(ok(&[]));
        assert!(ok(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]));
        assert!(ok(&["a=1", "b@vendor=2 x"]));
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(ok(&[&many[..32].join(",")]));
        assert!(!ok(&[&many.join(",")]));
        assert!(!ok(&[&format!("k={}", "v".repeat(MAX_TRACESTATE))]));
        for bad in ["novalue", "Upper=1", "k=", "=v", "k=a=b"] {
            assert!(!ok(&[bad]), "{bad}");
        }
        assert_eq!(parse(&format!("01-{}", "a".repeat(300))), None);
    }
}
