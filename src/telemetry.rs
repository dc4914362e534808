//! Span export over OTLP/HTTP with JSON encoding (`POST {endpoint}/v1/traces`,
//! `Content-Type: application/json`), the encoding every OpenTelemetry collector accepts on
//! port 4318. Written on the proxy's own hyper client: the OpenTelemetry SDK and its OTLP
//! exporter would add some 40 crates (prost, tonic or reqwest, the SDK) for one POST per batch.
//!
//! Guarantees: exporting never delays or fails a request (the span is queued with
//! `try_send`; a full queue drops it and counts it); memory is bounded (at most
//! [`MAX_QUEUE`] queued spans, batches of at most [`MAX_BATCH`], one POST at a time with a
//! [`POST_TIMEOUT`]); a span holds the method, the operation pattern, the service, the status,
//! the proxy's error code and the request id, never a header value that could carry the secret
//! or a signature; spans still queued at shutdown are sent first (bounded by the caller).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::TelemetryConfig;
use crate::metrics::{Metrics, ResultLabel};

/// A request's W3C trace id, set by `layers::tracecontext`; kept here, below the layers, for
/// the log and span writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    // One resize, then plain stores: no capacity check per digit.
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    for (pair, b) in out[start..].chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

impl TraceId {
    /// Appends the 32 lower-case hex digits (the log formatter's path, no `fmt` machinery).
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        push_hex(out, &self.0);
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut b = [0u8; 32];
        for (pair, byte) in b.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        f.write_str(std::str::from_utf8(&b).map_err(|_| std::fmt::Error)?)
    }
}

/// Spans waiting to be sent; more are dropped (and counted).
pub const MAX_QUEUE: usize = 4096;
/// Spans in one POST.
pub const MAX_BATCH: usize = 512;
/// How long a span may wait for its batch.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// One POST's limit; a collector that hangs costs one batch, not the queue.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// OTLP `SpanKind`.
const KIND_SERVER: u8 = 2;
/// OTLP `Status.code`.
const STATUS_ERROR: u8 = 2;

/// One finished request's span.
#[derive(Debug)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// `METHOD /pattern`: low cardinality, no ids.
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    /// 5xx answers (the proxy's own or the upstream's).
    pub error: bool,
}

#[derive(Debug)]
pub enum Attr {
    Str(String),
    Int(i64),
}

enum Msg {
    Span(SpanRecord),
    Flush(oneshot::Sender<()>),
}

/// The handle the request path holds: a queue into the export task.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Msg>,
    metrics: Metrics,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

type OtlpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl Exporter {
    /// Starts the export task when `[telemetry] otlp_endpoint` is set.
    pub fn start(cfg: &TelemetryConfig, metrics: &Metrics) -> Result<Option<Self>, rustls::Error> {
        let Some(url) = cfg.traces_url() else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: OtlpClient = Client::builder(TokioExecutor::new()).build(https);
        let (tx, rx) = mpsc::channel(MAX_QUEUE);
        let resource = json!({
            "attributes": [attr("service.name", &Attr::Str(cfg.service_name.clone()))]
        });
        tracing::info!(url = %url, "exporting spans over OTLP/HTTP (JSON)");
        tokio::spawn(run(rx, client, url, resource, metrics.clone()));
        Ok(Some(Self {
            tx,
            metrics: metrics.clone(),
        }))
    }

    /// Queues `span`; never waits.
    pub fn export(&self, span: SpanRecord) {
        if self.tx.try_send(Msg::Span(span)).is_err() {
            self.count("dropped", 1);
        }
    }

    /// Sends everything queued before this call, waiting at most `within`.
    pub async fn flush(&self, within: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        tokio::time::timeout(within, async {
            self.tx.send(Msg::Flush(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    fn count(&self, result: &'static str, n: u64) {
        count(&self.metrics, result, n);
    }
}

fn count(metrics: &Metrics, result: &'static str, n: u64) {
    metrics
        .spans
        .get_or_create(&ResultLabel { result })
        .inc_by(n);
}

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    client: OtlpClient,
    url: Uri,
    resource: Value,
    metrics: Metrics,
) {
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut tick = tokio::time::interval(BATCH_DELAY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One warning per failure streak, not one per batch.
    let mut failing = false;
    loop {
        let flush = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Span(s)) => {
                    batch.push(s);
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                    None
                }
                Some(Msg::Flush(done)) => Some(Some(done)),
                None => Some(None),
            },
            _ = tick.tick() => None,
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let body = encode(&resource, std::mem::take(&mut batch));
            match post(&client, &url, body).await {
                Ok(()) => {
                    count(&metrics, "exported", n);
                    if failing {
                        tracing::info!(url = %url, "OTLP export works again");
                    }
                    failing = false;
                }
                Err(why) => {
                    count(&metrics, "failed", n);
                    if !failing {
                        tracing::warn!(url = %url, error = %why, spans = n, "OTLP export failed; spans dropped (scp_auth_proxy_spans_total{{result=\"failed\"}})");
                    }
                    failing = true;
                }
            }
        }
        match flush {
            Some(Some(done)) => {
                let _ = done.send(());
            }
            Some(None) => return,
            None => {}
        }
    }
}

async fn post(client: &OtlpClient, url: &Uri, body: Vec<u8>) -> Result<(), String> {
    let req = Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(POST_TIMEOUT, async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read (bounded by the timeout) so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    })
    .await;
    answer.unwrap_or_else(|_| Err(format!("no answer within {POST_TIMEOUT:?}")))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn attr(key: &str, v: &Attr) -> Value {
    let value = match v {
        Attr::Str(s) => json!({ "stringValue": s }),
        // OTLP JSON writes 64-bit integers as strings.
        Attr::Int(i) => json!({ "intValue": i.to_string() }),
    };
    json!({ "key": key, "value": value })
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// One `ExportTraceServiceRequest` in OTLP's JSON mapping (ids as hex, enums as numbers).
pub fn encode(resource: &Value, spans: Vec<SpanRecord>) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .into_iter()
        .map(|s| {
            let mut v = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": KIND_SERVER,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": s.attributes.iter().map(|(k, a)| attr(k, a)).collect::<Vec<_>>(),
            });
            if let Some(p) = s.parent_span_id {
                v["parentSpanId"] = Value::String(hex(&p));
            }
            if s.error {
                v["status"] = json!({ "code": STATUS_ERROR });
            }
            v
        })
        .collect();
    let req = json!({
        "resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": { "name": "scp-auth-proxy", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&req).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_otlp_json() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let span = SpanRecord {
            trace_id: [0x4b; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some([0xff; 8]),
            name: "GET /v1/images/*".into(),
            start: t0,
            end: t0 + Duration::from_millis(3),
            attributes: vec![
                ("http.response.status_code", Attr::Int(503)),
                ("scp.service", Attr::Str("virtualserver".into())),
            ],
            error: true,
        };
        let v: Value =
            serde_json::from_slice(&encode(&json!({"attributes": []}), vec![span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4b".repeat(16));
        assert_eq!(s["spanId"], "0102030405060708");
        assert_eq!(s["parentSpanId"], "ffffffffffffffff");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(s["endTimeUnixNano"], "1700000000126456789");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["attributes"][0]["value"]["intValue"], "503");
        assert_eq!(s["attributes"][1]["value"]["stringValue"], "virtualserver");
    }
}
