//! Log output. Lines go to stderr through a buffer, so a busy proxy does not pay one `write(2)`
//! per request line: the buffer is flushed at least every 100 ms by a background thread, at
//! once for warnings and errors, and on exit ([`LogSink::flush`]).

use std::io::{self, BufWriter, Stderr, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

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
    let sink = SINK.get_or_init(LogSink::new).clone();
    let flusher = sink.clone();
    // Bounds how stale the log can be when the proxy is quiet.
    let _ = std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            flusher.flush();
        });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink.clone())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    sink
}
