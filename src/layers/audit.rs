//! The audit record: one structured record per request, on the tracing target `audit` (with
//! the other logs; a JSON line under `--log-format json`) or, with `[audit] file`, as a JSON
//! line appended to that file alone.
//!
//! Guarantees: exactly one record per answered request, the proxy's own refusals included;
//! the operation is `METHOD` + the allowlist rule that matched, else the catalog's pattern, so
//! ids a pattern names never appear (only a path no pattern names is shown as sent); the
//! record holds the access key id and never the secret or a signature; a failed write to the
//! audit file is logged (rate-limited by the log itself) and never fails the request. The
//! schema is [`Record`] (listed in the README).

use std::borrow::Cow;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use serde::Serialize;
use tower::{Layer, Service};

use crate::credentials::CredentialStore;
use crate::error::{ErrorCode, ServedBy};
use crate::forward::UpstreamLatency;
use crate::layers::trace::X_REQUEST_ID;
use crate::logging::Rfc3339Millis;
use crate::policy::allowlist::Decision;
use crate::policy::operations;
use crate::route::Routes;
use crate::target::Target;

/// Response headers SCP (or a gateway in front of it) names its request id in, first wins.
static UPSTREAM_ID_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("x-scp-request-id"), X_REQUEST_ID];

/// One audit record. Field order is the JSON order. Text borrows from the request's state,
/// the target and the response where it can (a record is written, then dropped).
#[derive(Debug, Serialize, PartialEq)]
pub struct Record<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: Rfc3339Millis,
    pub request_id: Cow<'a, str>,
    /// W3C trace id (32 hex digits), when the request carried or was given one.
    pub trace_id: Option<&'a str>,
    /// `None` when routing refused the request.
    pub service: Option<&'a str>,
    /// `METHOD /pattern`, or `METHOD /path` when no pattern names the path.
    pub operation: Cow<'a, str>,
    /// `Scp-Api-Version` sent upstream (`service MAJOR.MINOR`); `None` when nothing was sent.
    pub api_version: Option<Cow<'a, str>>,
    /// `forwarded`, `refused` (the proxy answered 4xx itself) or `failed` (the proxy answered
    /// 5xx itself: upstream unreachable, timed out, overloaded).
    pub decision: &'static str,
    /// The proxy's error code when it answered itself.
    pub code: Option<&'static str>,
    /// The status the client got.
    pub status: u16,
    /// The `Scp-Proxy-Hint` kind added to an upstream refusal (`clock_skew`, ...).
    pub hint: Option<&'static str>,
    /// The upstream's status, when it answered.
    pub upstream_status: Option<u16>,
    pub upstream_request_id: Option<Cow<'a, str>>,
    pub latency_ms: f64,
    pub upstream_ms: Option<f64>,
    /// Body sizes when known up front (Content-Length or held bytes).
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    pub access_key_id: &'a str,
}

impl Record<'_> {
    /// The fields as the `tracing::info!` in [`Sink::write`] records them (strings quoted,
    /// `None` left out), in its order.
    fn text_fields(&self, f: &mut crate::logging::TextFields<'_>) {
        f.str("time", self.time.as_str());
        f.str("request_id", &self.request_id);
        if let Some(v) = &self.trace_id {
            f.str("trace_id", v);
        }
        if let Some(v) = &self.service {
            f.str("service", v);
        }
        f.str("operation", &self.operation);
        if let Some(v) = &self.api_version {
            f.str("api_version", v);
        }
        f.str("decision", self.decision);
        if let Some(v) = self.code {
            f.str("code", v);
        }
        f.u64("status", self.status.into());
        if let Some(v) = self.hint {
            f.str("hint", v);
        }
        if let Some(v) = self.upstream_status {
            f.u64("upstream_status", v.into());
        }
        if let Some(v) = &self.upstream_request_id {
            f.str("upstream_request_id", v);
        }
        f.f64("latency_ms", self.latency_ms);
        if let Some(v) = self.upstream_ms {
            f.f64("upstream_ms", v);
        }
        if let Some(v) = self.request_bytes {
            f.u64("request_bytes", v);
        }
        if let Some(v) = self.response_bytes {
            f.u64("response_bytes", v);
        }
        f.str("access_key_id", self.access_key_id);
    }

    /// The record as `serde_json::to_vec` writes it, byte for byte, without serde.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        self.json_fields(out);
        out.push(b'}');
    }

    /// The JSON object's members, without its braces.
    fn json_fields(&self, out: &mut Vec<u8>) {
        use json::{f64, opt_f64, opt_str, opt_u64, str};
        out.extend_from_slice(b"\"time\":");
        str(out, self.time.as_str());
        out.extend_from_slice(b",\"request_id\":");
        str(out, &self.request_id);
        out.extend_from_slice(b",\"trace_id\":");
        opt_str(out, self.trace_id);
        out.extend_from_slice(b",\"service\":");
        opt_str(out, self.service);
        out.extend_from_slice(b",\"operation\":");
        str(out, &self.operation);
        out.extend_from_slice(b",\"api_version\":");
        opt_str(out, self.api_version.as_deref());
        out.extend_from_slice(b",\"decision\":");
        str(out, self.decision);
        out.extend_from_slice(b",\"code\":");
        opt_str(out, self.code);
        out.extend_from_slice(b",\"status\":");
        opt_u64(out, Some(self.status.into()));
        out.extend_from_slice(b",\"hint\":");
        opt_str(out, self.hint);
        out.extend_from_slice(b",\"upstream_status\":");
        opt_u64(out, self.upstream_status.map(u64::from));
        out.extend_from_slice(b",\"upstream_request_id\":");
        opt_str(out, self.upstream_request_id.as_deref());
        out.extend_from_slice(b",\"latency_ms\":");
        f64(out, self.latency_ms);
        out.extend_from_slice(b",\"upstream_ms\":");
        opt_f64(out, self.upstream_ms);
        out.extend_from_slice(b",\"request_bytes\":");
        opt_u64(out, self.request_bytes);
        out.extend_from_slice(b",\"response_bytes\":");
        opt_u64(out, self.response_bytes);
        out.extend_from_slice(b",\"access_key_id\":");
        str(out, self.access_key_id);
    }
}

/// JSON values as serde_json's compact writer writes them.
mod json {
    pub(super) use crate::logging::json_str as str;

    pub(super) fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => str(out, s),
            None => out.extend_from_slice(b"null"),
        }
    }

    pub(super) fn opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
        match v {
            Some(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
    }

    pub(super) fn f64(out: &mut Vec<u8>, v: f64) {
        crate::logging::json_f64(out, v);
    }

    pub(super) fn opt_f64(out: &mut Vec<u8>, v: Option<f64>) {
        match v {
            Some(v) => f64(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// Where records go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// A tracing event on target `audit`.
    Log,
    /// JSON lines appended to a file (one `write` per record).
    File {
        path: Arc<str>,
        file: Arc<Mutex<std::fs::File>>,
    },
}

impl Sink {
    /// Opens (creating, appending) the audit file; the error names it.
    pub fn file(path: &std::path::Path) -> Result<Self, std::io::Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Sink::File {
            path: path.display().to_string().into(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    fn enabled(&self) -> bool {
        match self {
            Sink::Log => tracing::enabled!(target: "audit", tracing::Level::INFO),
            Sink::File { .. } => true,
        }
    }

    /// Writes `r`, made at `now` (the log line's timestamp).
    fn write(&self, r: &Record, now: SystemTime) {
        match self {
            // The JSON log's line is written straight from the record (no serde, no tracing).
            Sink::Log if crate::logging::write_json_event("audit", now, |o| r.json_fields(o)) => {}
            // And the text log's, in tracing's layout for the fields below.
            Sink::Log if crate::logging::write_text_event("audit", now, |f| r.text_fields(f)) => {}
            // `&str` values are quoted and escaped by the text format (`%` ones are not), so
            // a client-chosen path in `operation` cannot forge `key=value` pairs.
            Sink::Log => tracing::info!(
                target: "audit",
                time = r.time.as_str(),
                request_id = &*r.request_id,
                trace_id = r.trace_id,
                service = r.service,
                operation = &*r.operation,
                api_version = r.api_version.as_deref(),
                decision = r.decision,
                code = r.code,
                status = r.status,
                hint = r.hint,
                upstream_status = r.upstream_status,
                upstream_request_id = r.upstream_request_id.as_deref(),
                latency_ms = r.latency_ms,
                upstream_ms = r.upstream_ms,
                request_bytes = r.request_bytes,
                response_bytes = r.response_bytes,
                access_key_id = r.access_key_id,
            ),
            Sink::File { path, file } => {
                let mut line = Vec::with_capacity(512);
                r.write_json(&mut line);
                line.push(b'\n');
                let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = f.write_all(&line) {
                    tracing::error!(file = %path, error = %e, "audit record not written");
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuditLayer(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    routes: Routes<Target>,
    store: CredentialStore,
    sink: Sink,
    /// Per target, in `routes.targets()` order.
    targets: Vec<PerTarget>,
}

/// What the record takes from a target, read once.
#[derive(Debug)]
struct PerTarget {
    /// The `Scp-Api-Version` it sends, as text.
    api_version: String,
}

impl AuditLayer {
    pub fn new(routes: Routes<Target>, store: CredentialStore, sink: Sink) -> Self {
        let targets = routes
            .targets()
            .iter()
            .map(|t| PerTarget {
                api_version: String::from_utf8_lossy(t.version_header.as_bytes()).into_owned(),
            })
            .collect();
        Self(Arc::new(Shared {
            routes,
            store,
            sink,
            targets,
        }))
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Audit<S> {
    layer: AuditLayer,
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Audit<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: http_body::Body,
    RB: http_body::Body,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = AuditFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = self.layer.0.sink.enabled().then(|| State {
            layer: self.layer.clone(),
            started: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id: req.headers().get(&X_REQUEST_ID).cloned(),
            trace_id: req
                .extensions()
                .get::<crate::layers::tracecontext::TraceId>()
                .map(hex),
            request_bytes: req.body().size_hint().exact(),
        });
        AuditFuture {
            inner: self.inner.call(req),
            state,
        }
    }
}

/// The trace id's 32 hex digits, kept for the record to borrow.
fn hex(id: &crate::layers::tracecontext::TraceId) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(id.0) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    out
}

struct State {
    layer: AuditLayer,
    started: Instant,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    trace_id: Option<[u8; 32]>,
    request_bytes: Option<u64>,
}

impl State {
    fn record<'a, RB: http_body::Body>(
        &'a self,
        resp: &'a Response<RB>,
        access_key_id: &'a str,
        now: SystemTime,
    ) -> Record<'a> {
        let ext = resp.extensions();
        let code = ext.get::<ErrorCode>().map(|c| c.0);
        let shared = &*self.layer.0;
        let served = ext.get::<ServedBy>().and_then(|s| {
            let targets = shared.routes.targets();
            let i = targets.iter().position(|t| t.name() == s.0)?;
            Some((&targets[i], shared.targets.get(i)?))
        });
        let target = served.map(|(t, _)| t);
        let status = resp.status().as_u16();
        let (decision, upstream_status) = match code {
            None => ("forwarded", Some(status)),
            Some(_) if status < 500 => ("refused", None),
            Some(_) => ("failed", None),
        };
        let forwarded = code.is_none();
        let operation = operation_ref(target, &shared.routes, &self.method, &self.uri);
        let upstream_request_id = forwarded
            .then(|| {
                UPSTREAM_ID_HEADERS
                    .iter()
                    .find_map(|n| resp.headers().get(n))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
            })
            .flatten();
        Record {
            time: Rfc3339Millis::new(now),
            request_id: self
                .request_id
                .as_ref()
                .map_or(Cow::Borrowed(""), |v| match v.to_str() {
                    // Visible ASCII, checked without a UTF-8 decode.
                    Ok(s) => Cow::Borrowed(s),
                    Err(_) => String::from_utf8_lossy(v.as_bytes()),
                }),
            trace_id: self
                .trace_id
                .as_ref()
                .and_then(|h| std::str::from_utf8(h).ok()),
            service: target.map(|t| t.name()),
            operation,
            api_version: served
                .filter(|_| forwarded)
                .map(|(_, per)| Cow::Borrowed(per.api_version.as_str())),
            decision,
            code,
            status,
            hint: ext.get::<crate::layers::explain::Hinted>().map(|h| h.0),
            upstream_status,
            upstream_request_id,
            latency_ms: millis(self.started.elapsed()),
            upstream_ms: ext.get::<UpstreamLatency>().map(|l| millis(l.0)),
            request_bytes: self.request_bytes,
            response_bytes: resp.body().size_hint().exact(),
            access_key_id,
        }
    }
}

/// `METHOD` + the allowlist rule of `target` that matched, else the catalog's pattern, else
/// `METHOD /path` as the service saw it: the name the audit record and the span use.
pub(crate) fn operation(
    target: Option<&Arc<Target>>,
    routes: &Routes<Target>,
    method: &Method,
    uri: &Uri,
) -> String {
    operation_ref(target, routes, method, uri).into_owned()
}

/// [`operation`], borrowing the pattern from the target or the catalog.
fn operation_ref<'a>(
    target: Option<&'a Arc<Target>>,
    routes: &Routes<Target>,
    method: &Method,
    uri: &Uri,
) -> Cow<'a, str> {
    let method = method.as_str();
    let path = service_path(routes, uri.path());
    let pattern = target.and_then(|t| {
        let rule = t
            .allowlist
            .as_ref()
            .and_then(|a| match a.list.decide(method, path) {
                Decision::Allowed(i) => a.list.rules.get(i).map(|r| r.text.as_str()),
                _ => None,
            });
        rule.or_else(|| operations::find(t.name(), method, path))
    });
    match pattern {
        Some(p) => Cow::Borrowed(p),
        None => Cow::Owned(format!("{method} {path}")),
    }
}

/// The path as the service saw it: routing strips a `/{service}` prefix
/// ([`Routes::split`]'s `path`, without the rewritten URI it builds).
fn service_path<'p>(routes: &Routes<Target>, path: &'p str) -> &'p str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    // A byte loop: cheaper than `str::find`'s searcher on a path this short.
    let (first, tail) = match rest.bytes().position(|b| b == b'/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    if routes.targets().iter().any(|t| t.name() == first) {
        tail.unwrap_or("/")
    } else {
        path
    }
}

/// Milliseconds to the microsecond (`7.356`, not `7.355513999999999`).
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

pin_project_lite::pin_project! {
    pub struct AuditFuture<F> {
        #[pin]
        inner: F,
        state: Option<State>,
    }
}

impl<F, RB, E> Future for AuditFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: http_body::Body,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(state)) = (&out, this.state.take()) {
            let shared = &*state.layer.0;
            let creds = shared.store.current();
            // One clock read for the record's time and its log line's timestamp.
            let now = SystemTime::now();
            shared
                .sink
                .write(&state.record(resp, &creds.access_key, now), now);
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record(all: bool) -> Record<'static> {
        Record {
            // 2026-12-01T22:46:12.884Z
            time: Rfc3339Millis::new(
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_165_172_884_913),
            ),
            request_id: "ff8b06aa-000000000000".into(),
            trace_id: all.then_some("fe71455acbc312a89c3b6ddc5af24d5c"),
            service: all.then_some("virtual\"server"),
            operation: if all {
                "GET /v1/\u{1}é\"x y=1".into()
            } else {
                "GET /v1/images/*".into()
            },
            api_version: all.then(|| "virtualserver 1.3".into()),
            decision: "forwarded",
            code: all.then_some("upstream_timeout"),
            status: 202,
            hint: all.then_some("clock_skew"),
            upstream_status: all.then_some(202),
            upstream_request_id: all.then(|| "up\\id".into()),
            latency_ms: 451.239,
            upstream_ms: all.then_some(0.1 + 0.2),
            request_bytes: all.then_some(0),
            response_bytes: all.then_some(21),
            access_key_id: "bench-ak",
        }
    }

    /// The fast text line is byte for byte what tracing's formatter writes for the event
    /// (after the timestamp), with every optional field present and with none.
    #[test]
    fn text_fast_path_matches_tracings_line() {
        for all in [true, false] {
            let r = record(all);
            let capture = Capture::default();
            let writer = capture.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            // No fast path is installed in tests, so this goes through `tracing::info!`.
            tracing::subscriber::with_default(subscriber, || {
                Sink::Log.write(&r, SystemTime::now())
            });
            let slow = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
            let mut fast = Vec::new();
            crate::logging::text_event(&mut fast, SystemTime::now(), "audit", |f| r.text_fields(f));
            let fast = String::from_utf8(fast).unwrap();
            let tail = |s: &str| s[s.find(" INFO ").expect("level")..].to_owned();
            assert_eq!(tail(&fast), tail(&slow), "all optional fields: {all}");
        }
    }

    #[test]
    fn the_time_is_rfc3339_millis() {
        assert_eq!(record(true).time.as_str(), "2026-12-01T22:46:12.884Z");
    }

    /// The hand-written JSON is serde_json's for the record, byte for byte.
    #[test]
    fn json_is_serde_jsons() {
        for all in [true, false] {
            let r = record(all);
            let mut out = Vec::new();
            r.write_json(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&r).unwrap(),
                "all optional fields: {all}"
            );
        }
    }

    /// The JSON log's line is the layout the serde path wrote: the serialised record's members
    /// between the log's `timestamp`/`level` and its `target`.
    #[test]
    fn json_log_line_wraps_the_record() {
        let r = record(true);
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_165_172_884_913);
        let mut line = Vec::new();
        crate::logging::json_event(&mut line, now, "audit", |o| r.json_fields(o));
        let obj = serde_json::to_string(&r).unwrap();
        let want = format!(
            "{{\"timestamp\":\"2026-12-01T22:46:12.884913Z\",\"level\":\"INFO\",{},\"target\":\"audit\"}}\n",
            &obj[1..obj.len() - 1]
        );
        assert_eq!(String::from_utf8(line).unwrap(), want);
    }

    #[test]
    fn json_strings_escape_as_serde_json_does() {
        let mut all = String::new();
        for c in (0u8..0x80)
            .map(char::from)
            .chain(['é', '\u{2028}', '\u{10ffff}'])
        {
            all.push(c);
        }
        for s in ["", "plain", "\"", "\\", "a\"b\\c\nd\u{7f}", &all] {
            let mut out = Vec::new();
            json::str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    /// Text from any chars, ASCII (controls included) weighted up.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop::collection::vec(
            prop_oneof![(0u8..0x80).prop_map(char::from), any::<char>()],
            0..24,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn float() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..100_000_000_000).prop_map(|us| us as f64 / 1e3),
            any::<f64>(),
        ]
    }

    proptest::proptest! {
        /// For any text in its string fields and any floats, the record's JSON is serde_json's.
        #[test]
        fn json_is_serde_jsons_for_any_text(
            request_id in text(),
            operation in text(),
            upstream_request_id in proptest::option::of(text()),
            service in proptest::option::of(text()),
            api_version in proptest::option::of(text()),
            latency_ms in float(),
            upstream_ms in proptest::option::of(float()),
            request_bytes in proptest::option::of(proptest::prelude::any::<u64>()),
        ) {
            let mut r = record(true);
            r.request_id = request_id.as_str().into();
            r.operation = operation.as_str().into();
            r.upstream_request_id = upstream_request_id.as_deref().map(Cow::Borrowed);
            r.service = service.as_deref();
            r.api_version = api_version.as_deref().map(Cow::Borrowed);
            r.latency_ms = latency_ms;
            r.upstream_ms = upstream_ms;
            r.request_bytes = request_bytes;
            let mut out = Vec::new();
            r.write_json(&mut out);
            proptest::prop_assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&r).unwrap()
            );
        }
    }

    #[test]
    fn catalog_names_the_patterns() {
        let find = |m, p| operations::find("virtualserver", m, p);
        assert_eq!(find("GET", "/"), Some("GET /"));
        assert_eq!(find("GET", "/v1/images"), Some("GET /v1/images"));
        assert_eq!(find("GET", "/v1/images/img-1"), Some("GET /v1/images/*"));
        assert_eq!(find("GET", "/v1/images/"), None);
        assert_eq!(
            find("POST", "/v1/images/img-1/import"),
            Some("POST /v1/images/*/import")
        );
        assert_eq!(find("POST", "/v1/images/img-1/import/x"), None);
        assert_eq!(find("PUT", "/v1/images/img-1"), None);
    }
}
