//! Log output. Lines go to stderr through a buffer, so a busy proxy does not pay one `write(2)`
//! per request line: the buffer is flushed at least every 100 ms by a background thread, at
//! once for warnings and errors, and on exit ([`LogSink::flush`]).
//!
//! The per-request `access` line is formatted here by [`write_access`], in the same layout as
//! tracing-subscriber's text and JSON output, without its field-visitor machinery: that path
//! cost about 16% of the proxy's instructions per request (callgrind), this one about 2%.

use std::cell::RefCell;
use std::io::{self, BufWriter, Stderr, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;

/// The shared, buffered stderr.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<BufWriter<Stderr>>>);

impl LogSink {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            io::stderr(),
        ))))
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<Stderr>> {
        // A panic while holding the lock leaves a usable buffer; keep logging.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        let _ = self.lock().flush();
    }
}

/// One event's writer: the formatted line goes into the buffer in one piece.
pub struct LineWriter<'a> {
    sink: &'a LogSink,
    flush: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.lock().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.sink.lock().write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.lock().flush()
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.flush {
            self.sink.flush();
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            sink: self,
            flush: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            sink: self,
            // Warnings and errors are rare and may precede an exit: out at once.
            flush: *meta.level() <= tracing::Level::WARN,
        }
    }
}

static SINK: OnceLock<LogSink> = OnceLock::new();

/// Set by [`init`] when access lines may bypass tracing's formatter: the sink and the format
/// (unset with ANSI colours, which only tracing's formatter writes).
static ACCESS: OnceLock<(LogSink, LogFormat)> = OnceLock::new();

/// The fields of one access line.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub request_id: &'a [u8],
    /// The client's id was refused and `request_id` generated in its place.
    pub request_id_replaced: bool,
    /// The listener: `plain` or `forward`.
    pub mode: &'a str,
    pub method: &'a str,
    pub service: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub upstream: Option<Duration>,
    pub total: Duration,
    pub error_code: Option<&'static str>,
    pub trace_id: Option<crate::telemetry::TraceId>,
}

/// Writes `line` straight into the log buffer, as tracing's formatter would have written the
/// `access` event at INFO. Returns false when the fast path is not installed (no [`init`], or
/// ANSI colours): the caller then logs through `tracing`. The caller checks the filter
/// (`tracing::enabled!`), so `RUST_LOG=access=off` still silences the line.
pub fn write_access(line: &AccessLine<'_>) -> bool {
    let Some((sink, format)) = ACCESS.get() else {
        return false;
    };
    with_line_buf(sink, |buf| match format {
        LogFormat::Text => format_text(buf, SystemTime::now(), line),
        LogFormat::Json => format_json(buf, SystemTime::now(), line),
    })
}

/// Formats one line with `f` into this thread's line buffer and writes it to `sink`; false
/// (nothing written) if the buffer is in use further up this thread's stack.
fn with_line_buf(sink: &LogSink, f: impl FnOnce(&mut Vec<u8>)) -> bool {
    thread_local! {
        static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    }
    BUF.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            return false;
        };
        buf.clear();
        f(&mut buf);
        let _ = sink.lock().write_all(&buf);
        // A long path must not keep a large buffer alive on the thread.
        if buf.capacity() > 16 * 1024 {
            *buf = Vec::with_capacity(512);
        }
        true
    })
}

/// Writes one INFO event of `target` in the JSON log's layout (`timestamp` at `now`, `level`,
/// the fields `fields` writes, `target`) straight into the log buffer. `fields` writes the
/// members of a JSON object without its braces (`"a":1,"b":2`, not empty). False when the JSON
/// log's fast path is not installed: the caller logs through `tracing` (which the caller's
/// `tracing::enabled!` check has already filtered).
pub fn write_json_event(target: &str, now: SystemTime, fields: impl FnOnce(&mut Vec<u8>)) -> bool {
    let Some((sink, LogFormat::Json)) = ACCESS.get() else {
        return false;
    };
    with_line_buf(sink, |out| json_event(out, now, target, fields))
}

/// The line [`write_json_event`] writes.
pub(crate) fn json_event(
    out: &mut Vec<u8>,
    now: SystemTime,
    target: &str,
    fields: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",");
    fields(out);
    out.extend_from_slice(b",\"target\":");
    json_str(out, target);
    out.extend_from_slice(b"}\n");
}

/// The fields of one text-format event, written as tracing-subscriber's text format writes
/// them (` name=value`), for [`write_text_event`].
pub struct TextFields<'a>(&'a mut Vec<u8>);

impl TextFields<'_> {
    fn name(&mut self, name: &str) {
        self.0.push(b' ');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'=');
    }
    /// A `&str` field: Debug, quoted.
    pub fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        debug_str(self.0, value);
    }
    pub fn u64(&mut self, name: &str, value: u64) {
        self.name(name);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
    /// An `f64` field: Debug, as tracing records floats.
    pub fn f64(&mut self, name: &str, value: f64) {
        self.name(name);
        debug_f64(self.0, value);
    }
}

/// Writes one INFO event of `target` in the text log's layout (`TIMESTAMP  INFO target:` and
/// the fields `fields` writes) straight into the log buffer, without tracing's field visitors
/// (an audit record through them cost about 16% of a proxied GET's instructions). False when
/// the text log's fast path is not installed: the caller logs through `tracing` (whose
/// filter the caller's `tracing::enabled!` check has already applied). The line's timestamp
/// is `now`.
pub fn write_text_event(
    target: &str,
    now: SystemTime,
    fields: impl FnOnce(&mut TextFields<'_>),
) -> bool {
    let Some((sink, LogFormat::Text)) = ACCESS.get() else {
        return false;
    };
    with_line_buf(sink, |buf| text_event(buf, now, target, fields))
}

/// The line [`write_text_event`] writes, at `now`.
pub(crate) fn text_event(
    out: &mut Vec<u8>,
    now: SystemTime,
    target: &str,
    fields: impl FnOnce(&mut TextFields<'_>),
) {
    timestamp(out, now);
    out.extend_from_slice(b"  INFO ");
    out.extend_from_slice(target.as_bytes());
    out.push(b':');
    fields(&mut TextFields(out));
    out.push(b'\n');
}

/// `2026-12-01T21:16:21.566413Z  INFO access: request_id=.. method=GET service="vs" ..`
fn format_text(out: &mut Vec<u8>, now: SystemTime, l: &AccessLine<'_>) {
    timestamp(out, now);
    // Every value a client chose is quoted: it cannot forge `key=value` pairs.
    out.extend_from_slice(b"  INFO access: request_id=");
    debug_str(out, &String::from_utf8_lossy(l.request_id));
    if l.request_id_replaced {
        out.extend_from_slice(b" request_id_replaced=true");
    }
    // A fixed word (`plain`/`forward`), never client bytes: written bare.
    out.extend_from_slice(b" mode=");
    out.extend_from_slice(l.mode.as_bytes());
    out.extend_from_slice(b" method=");
    debug_str(out, l.method);
    out.extend_from_slice(b" service=");
    debug_str(out, l.service);
    out.extend_from_slice(b" path=");
    debug_str(out, l.path);
    out.extend_from_slice(b" status=");
    out.extend_from_slice(itoa::Buffer::new().format(l.status).as_bytes());
    if let Some(u) = l.upstream {
        out.extend_from_slice(b" upstream_ms=");
        millis(out, u);
    }
    out.extend_from_slice(b" total_ms=");
    millis(out, l.total);
    if let Some(c) = l.error_code {
        out.extend_from_slice(b" error_code=");
        debug_str(out, c);
    }
    if let Some(t) = &l.trace_id {
        out.extend_from_slice(b" trace_id=");
        t.write_hex(out);
    }
    out.push(b'\n');
}

/// tracing-subscriber's flattened JSON: timestamp, level, the fields, target.
fn format_json(out: &mut Vec<u8>, now: SystemTime, l: &AccessLine<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
    json_str(out, &String::from_utf8_lossy(l.request_id));
    if l.request_id_replaced {
        out.extend_from_slice(b",\"request_id_replaced\":true");
    }
    out.extend_from_slice(b",\"mode\":");
    json_str(out, l.mode);
    out.extend_from_slice(b",\"method\":");
    json_str(out, l.method);
    out.extend_from_slice(b",\"service\":");
    json_str(out, l.service);
    out.extend_from_slice(b",\"path\":");
    json_str(out, l.path);
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(l.status).as_bytes());
    if let Some(u) = l.upstream {
        out.extend_from_slice(b",\"upstream_ms\":");
        millis(out, u);
    }
    out.extend_from_slice(b",\"total_ms\":");
    millis(out, l.total);
    if let Some(c) = l.error_code {
        out.extend_from_slice(b",\"error_code\":");
        json_str(out, c);
    }
    if let Some(t) = &l.trace_id {
        out.extend_from_slice(b",\"trace_id\":\"");
        t.write_hex(out);
        out.push(b'"');
    }
    out.extend_from_slice(b",\"target\":\"access\"}\n");
}

/// Milliseconds with microsecond resolution: `0.532`, `1500.000`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    out.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
    let frac = (us % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// RFC 3339 UTC with milliseconds (truncated), as `humantime::format_rfc3339_millis` writes it.
#[cfg(test)]
fn rfc3339_millis(now: SystemTime) -> String {
    Rfc3339Millis::new(now).as_str().to_owned()
}

/// An RFC 3339 UTC time with milliseconds (`2026-12-01T22:46:12.884Z`), held inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339Millis([u8; 24]);

impl Rfc3339Millis {
    /// `now`, the milliseconds truncated.
    pub fn new(now: SystemTime) -> Self {
        let d = since_epoch(now);
        let mut b = [0u8; 24];
        b[..19].copy_from_slice(&second(d.as_secs()));
        b[19] = b'.';
        put_digits(&mut b[20..23], u64::from(d.subsec_millis()));
        b[23] = b'Z';
        Self(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Rfc3339Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn since_epoch(now: SystemTime) -> Duration {
    now.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Writes `v` as `out.len()` decimal digits, zero-padded (the high digits dropped).
fn put_digits(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of the second `secs` after the epoch; the last one formatted is kept
/// per thread, since most lines fall in the same second as the one before.
fn second(secs: u64) -> [u8; 19] {
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 19])> =
            const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    LAST.with(|last| {
        let (at, text) = last.get();
        if at == secs {
            return text;
        }
        let text = format_second(secs);
        last.set((secs, text));
        text
    })
}

fn format_second(secs: u64) -> [u8; 19] {
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let mut b = [0u8; 19];
    put_digits(&mut b[0..4], y.clamp(0, 9999) as u64);
    b[4] = b'-';
    put_digits(&mut b[5..7], u64::from(m));
    b[7] = b'-';
    put_digits(&mut b[8..10], u64::from(day));
    b[10] = b'T';
    put_digits(&mut b[11..13], sod / 3600);
    b[13] = b':';
    put_digits(&mut b[14..16], sod / 60 % 60);
    b[16] = b':';
    put_digits(&mut b[17..19], sod % 60);
    b
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber writes it.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let d = since_epoch(now);
    let mut b = [0u8; 27];
    b[..19].copy_from_slice(&second(d.as_secs()));
    b[19] = b'.';
    put_digits(&mut b[20..26], u64::from(d.subsec_micros()));
    b[26] = b'Z';
    out.extend_from_slice(&b);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The bytes `Debug` writes as they are inside a string: printable ASCII but `"` and `\`.
static DEBUG_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// A `&str` field as tracing's text format writes it: Rust `Debug`, quoted.
fn debug_str(out: &mut Vec<u8>, s: &str) {
    // A fold, not `all`: without the early exit the check runs on whole vectors of bytes.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & DEBUG_PLAIN[usize::from(b)]);
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// `value` as `{value:?}` writes it; latencies (whole microseconds in milliseconds, below
/// 10^12) with integers instead of the float formatter.
fn debug_f64(out: &mut Vec<u8>, value: f64) {
    if !latency_f64(out, value) {
        let _ = write!(out, "{value:?}");
    }
}

/// `value` as serde_json writes it (`null` when not finite); latencies as [`debug_f64`] does,
/// which for them is the same text.
pub(crate) fn json_f64(out: &mut Vec<u8>, value: f64) {
    if !latency_f64(out, value) {
        let _ = serde_json::to_writer(&mut *out, &value);
    }
}

/// Writes `value` and returns true when it is a latency: whole microseconds in milliseconds,
/// non-negative, below 10^12. Within this range a double is closer than 0.0005 to its
/// neighbours, so the shortest decimal that reads back as `value` (what both `{:?}` and
/// serde_json write) is `micros / 1000` with trailing zeros dropped, one kept after the point.
fn latency_f64(out: &mut Vec<u8>, value: f64) -> bool {
    let micros = (value * 1e3).round();
    if !(value.is_sign_positive() && (0.0..1e15).contains(&micros) && micros / 1e3 == value) {
        return false;
    }
    let micros = micros as u64;
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    let frac = micros % 1000;
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&digits[..keep]);
    true
}

/// A JSON string literal, escaped as serde_json escapes: `"` and `\` behind a backslash, the
/// short escapes for backspace, form feed, newline, carriage return and tab, `\u00xx` for
/// other control bytes; everything else (DEL and non-ASCII included) as is.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes out buffered log lines, e.g. before printing an error to stderr directly, so the
/// output stays in order.
pub fn flush() {
    if let Some(s) = SINK.get() {
        s.flush();
    }
}

/// Installs the global subscriber (level from `RUST_LOG`, default `info`) and returns the sink
/// to flush before the process exits.
pub fn init(format: LogFormat) -> LogSink {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let sink = SINK.get_or_init(LogSink::new).clone();
    let flusher = sink.clone();
    // Bounds how stale the log can be when the proxy is quiet.
    let _ = std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            flusher.flush();
        });
    let (filter, refused) = log_filter(crate::env::log_filter().as_deref());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !ansi || format == LogFormat::Json {
        let _ = ACCESS.set((sink.clone(), format));
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(sink.clone())
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    if let Some((value, error)) = refused {
        tracing::warn!(
            target: "scp_auth_proxy::logging",
            RUST_LOG = %value,
            %error,
            "RUST_LOG is not a list of target=level directives (e.g. info,access=off); logging at info"
        );
    }
    sink
}

/// The log filter from `RUST_LOG`: comma-separated `level` or `target=level` directives
/// (tracing-subscriber's [`Targets`](tracing_subscriber::filter::Targets), a static filter:
/// no regex engine in the binary, and a callsite's interest is decided once). Unset or empty
/// is `info`; a value that does not parse is `info` too, returned beside it to be warned about.
fn log_filter(
    value: Option<&str>,
) -> (
    tracing_subscriber::filter::Targets,
    Option<(String, tracing_subscriber::filter::ParseError)>,
) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let info = || Targets::new().with_default(LevelFilter::INFO);
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (info(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (info(), Some((v.to_owned(), e))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_reads_levels_and_targets() {
        use tracing::Level;
        use tracing_subscriber::filter::LevelFilter;
        let (f, refused) = log_filter(None);
        assert!(refused.is_none());
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));
        assert!(f.would_enable("access", &Level::INFO));
        assert!(!f.would_enable("access", &Level::DEBUG));

        let (f, refused) = log_filter(Some(" "));
        assert!(refused.is_none());
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));

        let (f, refused) = log_filter(Some("info,access=off"));
        assert!(refused.is_none());
        assert!(!f.would_enable("access", &Level::INFO));
        assert!(!f.would_enable("access", &Level::ERROR));
        assert!(f.would_enable("audit", &Level::INFO));
        assert!(f.would_enable("scp_auth_proxy::server", &Level::INFO));

        // A target covers the modules below it, as EnvFilter's did.
        let (f, _) = log_filter(Some("warn,scp_auth_proxy=debug"));
        assert!(f.would_enable("scp_auth_proxy::forward::pool", &Level::DEBUG));
        assert!(!f.would_enable("hyper::proto", &Level::INFO));
        assert!(f.would_enable("hyper::proto", &Level::WARN));

        let (f, _) = log_filter(Some("trace"));
        assert!(f.would_enable("rustls", &Level::TRACE));

        let (f, refused) = log_filter(Some("info,access=loud"));
        let (value, _) = refused.expect("an unknown level is refused");
        assert_eq!(value, "info,access=loud");
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));
        assert!(f.would_enable("access", &Level::INFO));
    }

    fn line(path: &'static str, id: &'static [u8]) -> AccessLine<'static> {
        AccessLine {
            request_id: id,
            request_id_replaced: false,
            mode: "forward",
            method: "GET",
            service: "virtualserver",
            path,
            status: 202,
            upstream: Some(Duration::from_micros(532)),
            total: Duration::from_micros(1_500_007),
            error_code: None,
            trace_id: None,
        }
    }

    // 2026-12-01T21:16:21.566413Z
    fn at() -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_micros(1_796_159_781_566_413)
    }

    #[test]
    fn text_line_has_tracings_layout() {
        let mut out = Vec::new();
        format_text(
            &mut out,
            at(),
            &line("/v1/images", b"836b10cd-0000000002dd"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-01T21:16:21.566413Z  INFO access: request_id=\"836b10cd-0000000002dd\" \
             mode=forward method=\"GET\" service=\"virtualserver\" path=\"/v1/images\" status=202 \
             upstream_ms=0.532 total_ms=1500.007\n"
        );
    }

    #[test]
    fn text_line_escapes_like_debug_and_names_the_error() {
        let mut l = line("/a\"b\\c", b"x\xffy");
        l.upstream = None;
        l.error_code = Some("operation_not_allowed");
        let mut out = Vec::new();
        format_text(&mut out, at(), &l);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(r#"request_id="x�y" mode=forward method"#), "{s}");
        assert!(s.contains(r#"path="/a\"b\\c" status=202 total_ms"#), "{s}");
        assert!(
            s.ends_with(" error_code=\"operation_not_allowed\"\n"),
            "{s}"
        );
        assert!(!s.contains("upstream_ms"), "{s}");
    }

    #[test]
    fn client_values_cannot_forge_fields() {
        let mut l = line("/v1/x", br#"abc status=200 service="iam" path="/forged""#);
        l.request_id_replaced = true;
        let mut out = Vec::new();
        format_text(&mut out, at(), &l);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains(r#"request_id="abc status=200 service=\"iam\" path=\"/forged\"" request_id_replaced=true mode=forward method="GET""#),
            "{s}"
        );
        // Read as logfmt (quoted values may hold spaces and `\"`): one of each key.
        let fields = logfmt(s.split_once("access: ").unwrap().1.trim_end());
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "request_id",
                "request_id_replaced",
                "mode",
                "method",
                "service",
                "path",
                "status",
                "upstream_ms",
                "total_ms"
            ],
            "{s}"
        );
        assert_eq!(fields[6].1, "202");
        assert_eq!(fields[5].1, "/v1/x");
    }

    /// `key=value` pairs, values bare or Rust-`Debug`-quoted, unescaped.
    fn logfmt(s: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut it = s.chars().peekable();
        while it.peek().is_some() {
            let key: String = it.by_ref().take_while(|&c| c != '=').collect();
            let mut value = String::new();
            if it.peek() == Some(&'"') {
                it.next();
                while let Some(c) = it.next() {
                    match c {
                        '\\' => value.extend(it.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                assert!(matches!(it.next(), None | Some(' ')), "{s}");
            } else {
                value = it.by_ref().take_while(|&c| c != ' ').collect();
            }
            out.push((key, value));
        }
        out
    }

    #[test]
    fn json_line_parses_with_every_field() {
        let mut l = line("/v1/\"q\"\t", b"id-1");
        l.request_id_replaced = true;
        l.error_code = Some("upstream_timeout");
        l.trace_id = Some(crate::telemetry::TraceId([0xab; 16]));
        let mut out = Vec::new();
        format_json(&mut out, at(), &l);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-12-01T21:16:21.566413Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["request_id_replaced"], true);
        assert_eq!(v["mode"], "forward");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["service"], "virtualserver");
        assert_eq!(v["path"], "/v1/\"q\"\t");
        assert_eq!(v["status"], 202);
        assert_eq!(v["upstream_ms"], 0.532);
        assert_eq!(v["total_ms"], 1500.007);
        assert_eq!(v["error_code"], "upstream_timeout");
        assert_eq!(v["trace_id"], "ab".repeat(16));
    }

    /// Floats are written as `{:?}` writes them: latencies on the integer path, others not.
    #[test]
    fn floats_as_debug_writes_them() {
        let mut values: Vec<f64> = (0..200_000u64).map(|us| us as f64 / 1e3).collect();
        for us in [
            999_999_999_999_999u64,
            1_000_000_000_000_000,
            123_456_789_012_345,
        ] {
            values.extend([us as f64 / 1e3, (us + 1) as f64 / 1e3]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(f64::from_bits(x));
            values.push((x % 10_000_000) as f64 / 1e3);
            values.push((x % 1_000_000) as f64 / 1e4);
        }
        values.extend([
            -0.0,
            -1.5,
            0.1 + 0.2,
            1e-7,
            1e16,
            1e300,
            f64::NAN,
            f64::INFINITY,
        ]);
        for v in values {
            let mut out = Vec::new();
            debug_f64(&mut out, v);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{v:?}"),
                "{}",
                v.to_bits()
            );
        }
    }

    #[test]
    fn millis_timestamps_match_humantime() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Any instant from 1970 to 2200, to the nanosecond.
            let t = std::time::UNIX_EPOCH + Duration::from_nanos(x % 7_258_118_400_000_000_000);
            assert_eq!(
                rfc3339_millis(t),
                humantime::format_rfc3339_millis(t).to_string()
            );
        }
    }

    /// The second kept per thread follows the clock: forwards within a second and across
    /// seconds, minutes and days, and backwards.
    #[test]
    fn the_kept_second_follows_the_clock() {
        let start = 1_796_169_598_000u64; // 2026-12-01T23:59:58Z, in milliseconds
        let mut ms: Vec<u64> = (0..40).map(|i| start + i * 137).collect();
        ms.extend([
            start + 3_000,
            start,
            start - 86_400_000,
            start + 999,
            start + 1_000,
        ]);
        for m in ms {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(m);
            assert_eq!(
                Rfc3339Millis::new(t).as_str(),
                humantime::format_rfc3339_millis(t).to_string()
            );
            let mut out = Vec::new();
            timestamp(&mut out, t);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
    }

    #[test]
    fn json_floats_as_serde_json_writes_them() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values: Vec<f64> = (0..20_000u64).map(|us| us as f64 / 1e3).collect();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.extend([f64::from_bits(x), (x % 10_000_000_000) as f64 / 1e3]);
        }
        values.extend([-0.0, 1e16, 1e-7, 0.1 + 0.2, f64::NAN, f64::NEG_INFINITY]);
        for v in values {
            let mut out = Vec::new();
            json_f64(&mut out, v);
            assert_eq!(out, serde_json::to_vec(&v).unwrap(), "{}", v.to_bits());
        }
    }

    #[test]
    fn strings_as_debug_writes_them() {
        let mut all = String::new();
        for c in (0u8..0x80)
            .map(char::from)
            .chain(['é', '\u{a0}', '\u{2028}', '\u{10ffff}'])
        {
            all.push(c);
            for s in [c.to_string(), format!("ab{c}cd")] {
                let mut out = Vec::new();
                debug_str(&mut out, &s);
                assert_eq!(String::from_utf8(out).unwrap(), format!("{s:?}"));
            }
        }
        let mut out = Vec::new();
        debug_str(&mut out, &all);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{all:?}"));
    }

    #[test]
    fn timestamps_match_the_calendar() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000Z"),
            (1_709_251_199, "2024-02-29T23:59:59.000000Z"),
        ] {
            let mut out = Vec::new();
            timestamp(&mut out, std::time::UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
