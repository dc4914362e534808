//! Explainers: when the upstream answers 401, 403, 404 or 406, say what the proxy knows about
//! why, in an `Scp-Proxy-Hint` response header and a warn log line.
//!
//! Guarantees: the upstream's status, headers and body pass unchanged (one header is added);
//! a hint never holds the secret or a signature (only the access key id, the method, the
//! path, the pinned version and the measured clock offset); every upstream answer with a
//! `Date` header updates `scp_auth_proxy_clock_skew_seconds` (local clock minus the upstream's),
//! and the first one is the start-up skew check: a warning past [`SKEW_WARN`], else an info
//! line. Errors of the inner service pass through untouched.
//!
//! The decision is the pure [`explain`], tested on its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use tower::{Layer, Service};

use crate::catalog::{self, Date};
use crate::credentials::CredentialStore;
use crate::metrics::Metrics;
use crate::policy::operations;
use crate::target::{RoutedRequest, Target};

pub const SCP_PROXY_HINT: HeaderName = HeaderName::from_static("scp-proxy-hint");

/// A clock offset past this is worth a warning and, on a refusal, is named first.
pub const SKEW_WARN: Duration = Duration::from_secs(60);

/// What the proxy sent upstream, as far as a hint needs it.
#[derive(Clone, Copy, Debug)]
pub struct Sent<'a> {
    pub service: &'a str,
    pub method: &'a str,
    /// The path as the upstream saw it (service prefix stripped), without the query.
    pub path: &'a str,
    /// The pinned `MAJOR.MINOR` sent in `Scp-Api-Version`.
    pub api_version: &'a str,
    pub access_key: &'a str,
    /// Whether the request carried the SCP signature headers.
    pub signed: bool,
}

/// One explanation: a stable kind and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// `clock_skew`, `unknown_access_key`, `forbidden`, `version_retired`, `version_unknown`,
    /// `version_refused`, `unknown_path` or `unsigned_404`.
    pub kind: &'static str,
    pub message: String,
}

impl Hint {
    /// `kind: message`, as a header value (printable ASCII only).
    pub fn header_value(&self) -> HeaderValue {
        let text: String = format!("{}: {}", self.kind, self.message)
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
            .collect();
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unprintable"))
    }
}

/// Local clock minus the upstream's `Date`, in seconds (positive: the local clock is ahead).
pub fn clock_offset(headers: &HeaderMap, now: SystemTime) -> Option<f64> {
    let date = headers.get(http::header::DATE)?.to_str().ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    Some(match now.duration_since(theirs) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    })
}

fn describe_offset(offset: f64) -> String {
    let side = if offset >= 0.0 { "ahead of" } else { "behind" };
    format!(
        "the local clock is {:.0}s {side} the upstream's Date",
        offset.abs()
    )
}

/// Why the upstream may have answered `status`, from what the proxy knows; `None` for any
/// other status, or when the proxy knows nothing useful.
pub fn explain(
    status: StatusCode,
    headers: &HeaderMap,
    sent: &Sent<'_>,
    now: SystemTime,
) -> Option<Hint> {
    let code = status.as_u16();
    if !matches!(code, 401 | 403 | 404 | 406) {
        return None;
    }
    let offset = clock_offset(headers, now);
    let hint = |kind, message| Some(Hint { kind, message });
    if let Some(o) = offset.filter(|o| o.abs() > SKEW_WARN.as_secs_f64() && code != 406) {
        return hint(
            "clock_skew",
            format!(
                "{}; SCP accepts a signature only near its own time (Scp-Timestamp is the local clock): fix this host's clock (NTP)",
                describe_offset(o)
            ),
        );
    }
    let (method, path, service, ak) = (sent.method, sent.path, sent.service, sent.access_key);
    match code {
        401 => hint(
            "unknown_access_key",
            format!(
                "SCP did not accept access key {ak:?} ({}): it may be unknown to SCP, disabled, or from another environment, or the secret key is not its pair",
                match offset {
                    Some(o) => format!("clock offset {o:.0}s, within bounds"),
                    None => "no Date header to check the clock against".into(),
                }
            ),
        ),
        403 => hint(
            "forbidden",
            format!("SCP authenticated access key {ak:?} but refused {method} {path} on {service}: the key's IAM policy, or the account in Scp-AccountId, does not allow it"),
        ),
        406 => {
            let v = sent.api_version;
            match catalog::find(service, v) {
                None if catalog::current(service).is_some() => hint(
                    "version_unknown",
                    format!(
                        "Scp-Api-Version \"{service} {v}\" is not a version the catalog knows for {service} (current: {}); see `scp-auth-proxy versions`",
                        catalog::current(service).map_or("?", |c| c.version)
                    ),
                ),
                Some(entry) if !entry.is_supported_on(Date::of(now)) => hint(
                    "version_retired",
                    format!(
                        "Scp-Api-Version \"{service} {v}\" is {} in the catalog{}; pin a supported version (services.{service}.api_version)",
                        entry.status.as_str(),
                        entry.last_day.map(|d| format!(", last supported day {d}")).unwrap_or_default()
                    ),
                ),
                _ => hint(
                    "version_refused",
                    format!("SCP refused Scp-Api-Version \"{service} {v}\"; compare with its live list: `scp-auth-proxy versions --online`"),
                ),
            }
        }
        _ if !sent.signed => hint(
            "unsigned_404",
            "SCP answers 404 to requests that reach it unsigned; this one carried no Scp-Signature".into(),
        ),
        _ if operations::knows_service(service) && operations::find(service, method, path).is_none() => hint(
            "unknown_path",
            format!(
                "{method} {path} is not an operation the proxy's catalog knows for {service} ({}); check the path and the service prefix",
                operations::list(service).join(", ")
            ),
        ),
        _ if is_json(headers) => None,
        _ => hint(
            "unsigned_404",
            format!("SCP answers a bare 404 to requests that reach it unsigned; this one left the proxy signed with access key {ak:?}: check that nothing between the proxy and SCP strips the Scp-* headers, and that the upstream is the right host for {service}"),
        ),
    }
}

/// A JSON error body is SCP saying the resource is not there: nothing to add.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

/// The kind of hint added to a response, in its extensions for the access and audit lines.
#[derive(Clone, Copy, Debug)]
pub struct Hinted(pub &'static str);

#[derive(Clone, Debug)]
pub struct ExplainLayer {
    store: CredentialStore,
    metrics: Metrics,
    /// Set once the start-up skew check has run (on the first upstream `Date`).
    checked: Arc<AtomicBool>,
}

impl ExplainLayer {
    pub fn new(store: CredentialStore, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            checked: Arc::default(),
        }
    }
}

impl<S> Layer<S> for ExplainLayer {
    type Service = Explain<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Explain {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Explain<S> {
    layer: ExplainLayer,
    inner: S,
}

impl<S, B, RB> Service<RoutedRequest<B>> for Explain<S>
where
    S: Service<RoutedRequest<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ExplainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: RoutedRequest<B>) -> Self::Future {
        let req = routed.request();
        let state = Some(State {
            layer: self.layer.clone(),
            target: routed.target().clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
        });
        ExplainFuture {
            inner: self.inner.call(routed),
            state,
        }
    }
}

struct State {
    layer: ExplainLayer,
    target: Arc<Target>,
    method: Method,
    uri: Uri,
}

impl State {
    fn observe<RB>(self, resp: &mut Response<RB>) {
        let now = SystemTime::now();
        let service = self.target.name();
        if let Some(offset) = clock_offset(resp.headers(), now) {
            self.layer.metrics.clock_skew_seconds.set(offset);
            if !self.layer.checked.swap(true, Ordering::Relaxed) {
                if offset.abs() > SKEW_WARN.as_secs_f64() {
                    tracing::warn!(
                        service,
                        offset_seconds = offset,
                        "clock skew check: {}; signatures may be refused",
                        describe_offset(offset)
                    );
                } else {
                    tracing::info!(
                        service,
                        offset_seconds = offset,
                        "clock skew check: within {}s of the upstream",
                        SKEW_WARN.as_secs()
                    );
                }
            }
        }
        let creds = self.layer.store.current();
        let sent = Sent {
            service,
            method: self.method.as_str(),
            path: self.uri.path(),
            api_version: &self.target.config.api_version,
            access_key: &creds.access_key,
            signed: true,
        };
        if let Some(hint) = explain(resp.status(), resp.headers(), &sent, now) {
            tracing::warn!(
                service,
                status = resp.status().as_u16(),
                method = %self.method,
                path = self.uri.path(),
                hint = hint.kind,
                "upstream refused: {}",
                hint.message
            );
            resp.headers_mut()
                .insert(SCP_PROXY_HINT, hint.header_value());
            resp.extensions_mut().insert(Hinted(hint.kind));
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ExplainFuture<F> {
        #[pin]
        inner: F,
        state: Option<State>,
    }
}

impl<F, RB, E> Future for ExplainFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(state)) = (&mut out, this.state.take()) {
            state.observe(resp);
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000; // 2026-05-28

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn headers(date_offset_secs: i64, json: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        let theirs =
            SystemTime::UNIX_EPOCH + Duration::from_secs((NOW as i64 + date_offset_secs) as u64);
        h.insert(
            http::header::DATE,
            HeaderValue::from_str(&httpdate::fmt_http_date(theirs)).unwrap(),
        );
        if json {
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        h
    }

    fn sent<'a>(method: &'a str, path: &'a str, version: &'a str) -> Sent<'a> {
        Sent {
            service: "virtualserver",
            method,
            path,
            api_version: version,
            access_key: "AK-1",
            signed: true,
        }
    }

    fn kind(status: u16, h: &HeaderMap, s: &Sent<'_>) -> Option<&'static str> {
        explain(StatusCode::from_u16(status).unwrap(), h, s, now()).map(|h| h.kind)
    }

    #[test]
    fn skew_is_measured_and_named_first() {
        let h = headers(-600, true);
        assert_eq!(clock_offset(&h, now()), Some(600.0));
        let hint = explain(
            StatusCode::UNAUTHORIZED,
            &h,
            &sent("GET", "/v1/images", "1.3"),
            now(),
        )
        .unwrap();
        assert_eq!(hint.kind, "clock_skew");
        assert!(hint.message.contains("600s ahead of"), "{}", hint.message);
        assert_eq!(clock_offset(&headers(90, false), now()), Some(-90.0));
        assert_eq!(
            kind(403, &headers(90, false), &sent("GET", "/v1/images", "1.3")),
            Some("clock_skew")
        );
        // Within a minute, skew is not the story.
        assert_eq!(
            kind(401, &headers(-30, false), &sent("GET", "/v1/images", "1.3")),
            Some("unknown_access_key")
        );
        assert_eq!(clock_offset(&HeaderMap::new(), now()), None);
    }

    #[test]
    fn each_refusal_gets_its_hint() {
        let h = headers(0, false);
        let hint = explain(
            StatusCode::UNAUTHORIZED,
            &h,
            &sent("GET", "/v1/images", "1.3"),
            now(),
        )
        .unwrap();
        assert!(
            hint.message.contains("\"AK-1\"") && hint.message.contains("clock offset 0s"),
            "{}",
            hint.message
        );
        assert_eq!(
            kind(403, &h, &sent("DELETE", "/v1/images/x", "1.3")),
            Some("forbidden")
        );
        assert_eq!(
            kind(406, &h, &sent("GET", "/v1/images", "9.9")),
            Some("version_unknown")
        );
        // 1.0's last day was 2025-12-31.
        let hint = explain(
            StatusCode::NOT_ACCEPTABLE,
            &h,
            &sent("GET", "/v1/images", "1.0"),
            now(),
        )
        .unwrap();
        assert_eq!(hint.kind, "version_retired");
        assert!(
            hint.message.contains("last supported day 2025-12-31"),
            "{}",
            hint.message
        );
        assert_eq!(
            kind(406, &h, &sent("GET", "/v1/images", "1.3")),
            Some("version_refused")
        );
        assert_eq!(
            kind(404, &h, &sent("GET", "/v1/imagez", "1.3")),
            Some("unknown_path")
        );
        // A bare 404 on a known path: what SCP does to unsigned requests.
        assert_eq!(
            kind(404, &h, &sent("GET", "/v1/images/img-1", "1.3")),
            Some("unsigned_404")
        );
        let mut unsigned = sent("GET", "/v1/images", "1.3");
        unsigned.signed = false;
        assert_eq!(kind(404, &h, &unsigned), Some("unsigned_404"));
        // A JSON 404 on a known path is SCP saying "no such image": no hint.
        assert_eq!(
            kind(
                404,
                &headers(0, true),
                &sent("GET", "/v1/images/img-1", "1.3")
            ),
            None
        );
        for status in [200, 400, 409, 500, 502] {
            assert_eq!(
                kind(
                    status,
                    &headers(-600, false),
                    &sent("GET", "/v1/images", "1.3")
                ),
                None,
                "{status}"
            );
        }
    }

    #[test]
    fn header_value_is_printable() {
        let h = Hint {
            kind: "forbidden",
            message: "a\u{3a9}b\nc".into(),
        };
        assert_eq!(h.header_value(), "forbidden: a?b?c");
    }
}
