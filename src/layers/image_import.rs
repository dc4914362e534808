//! Image import validation: the body of an image import (or image creation) is read, checked
//! and forwarded byte-identical, or refused.
//!
//! Applies to services that are SCP's virtualserver: named `virtualserver` (the name the
//! `Scp-Api-Version` header must carry for virtualserver anyway), or whose upstream host's
//! first label is `virtualserver`. On those, for `POST /v1/images/{image_id}/import` and
//! `POST /v1/images` (recognised generously, see [`crate::policy::image_import`]):
//! - a `Content-Length` above `server.max_inspected_body_bytes`, or a body that grows past it:
//!   413 `body_too_large`, without reading further;
//! - a body not complete within the service's `timeout`: 408 `body_timeout`;
//! - a `Content-Encoding` other than `identity`: 415 `body_encoded`;
//! - a body that breaks a rule: 400 with that rule's code;
//! - otherwise the exact bytes received go on, with a matching `Content-Length`.
//!
//! On every refusal the inner service is never called, so nothing goes upstream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::body::Body;
use crate::config::ServiceConfig;
use crate::credentials::CredentialStore;
use crate::error::ProxyError;
use crate::policy::image_import::{self, Operation};
use crate::policy::image_url::Expect;
use crate::policy::PolicyError;
use crate::route::Routed;

/// Whether a service is SCP's virtualserver, whose image routes are inspected.
pub fn is_image_service(svc: &ServiceConfig) -> bool {
    svc.name == "virtualserver"
        || svc
            .upstream
            .authority
            .host()
            .split('.')
            .next()
            .is_some_and(|l| l.eq_ignore_ascii_case("virtualserver"))
}

#[derive(Clone, Debug)]
pub struct ImageImportLayer {
    credentials: CredentialStore,
    max_body: usize,
}

impl ImageImportLayer {
    /// `credentials`: the store the signer uses, so the account a URL must belong to follows
    /// a reload ("" when none: URLs' accounts are not compared); `max_body`:
    /// `server.max_inspected_body_bytes`.
    pub fn new(credentials: CredentialStore, max_body: usize) -> Self {
        Self {
            credentials,
            max_body,
        }
    }
}

impl<S> Layer<S> for ImageImportLayer {
    type Service = ImageImport<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ImageImport {
            credentials: self.credentials.clone(),
            max_body: self.max_body,
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ImageImport<S> {
    credentials: CredentialStore,
    max_body: usize,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for ImageImport<S>
where
    S: Service<Request<Body>, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inspect = req.extensions().get::<Routed>().and_then(|r| {
            is_image_service(&r.target.config)
                .then(|| image_import::operation(req.method().as_str(), req.uri().path()))
                .flatten()
                .map(|op| (op, r.target.clone()))
        });
        let Some((op, target)) = inspect else {
            return Box::pin(self.inner.call(req));
        };
        // The ready inner service goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let credentials = self.credentials.snapshot();
        let max_body = self.max_body;
        Box::pin(async move {
            let svc = &target.config;
            let (mut parts, body) = req.into_parts();
            let bytes = read_bounded(&parts.headers, body, max_body, op, svc).await?;
            let env = svc.env();
            let expect = Expect {
                region: svc.region.as_deref(),
                env: env.as_deref(),
                account_id: Some(&credentials.account_id),
            };
            image_import::check_body(op, &bytes, &expect)?;
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            inner
                .call(Request::from_parts(parts, crate::body::full(bytes)))
                .await
        })
    }
}

async fn read_bounded(
    headers: &http::HeaderMap,
    body: Body,
    max: usize,
    op: Operation,
    svc: &ServiceConfig,
) -> Result<Bytes, PolicyError> {
    let operation = op.describe();
    // Every value and every list item: `identity` followed by a second header must not pass.
    for enc in headers.get_all(header::CONTENT_ENCODING) {
        if !enc
            .as_bytes()
            .split(|b| *b == b',')
            .all(|item| item.trim_ascii().eq_ignore_ascii_case(b"identity"))
        {
            return Err(PolicyError::BodyEncoded {
                encoding: String::from_utf8_lossy(enc.as_bytes()).into_owned(),
                operation,
            });
        }
    }
    let too_large = PolicyError::BodyTooLarge {
        limit: max,
        operation,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large);
    }
    let read = Limited::new(body, max).collect();
    match tokio::time::timeout(svc.timeout, read).await {
        Err(_) => Err(PolicyError::BodyTimeout {
            service: svc.name.clone(),
            timeout: svc.timeout,
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large),
        Ok(Err(e)) => Err(PolicyError::BodyUnreadable {
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{call_recorded, routed_request, routed_request_for, service};
    use std::sync::atomic::Ordering;

    const ACCT: &str = "0123456789abcdef0123456789abcdef";
    const PATH: &str = "/v1/images/img-1/import";

    fn good_body() -> String {
        format!(
            "{{\n  \"url\": \"https://object-store.kr-west1.e.samsungsdscloud.com/{ACCT}:bucket/ubuntu.qcow2\"\n}}"
        )
    }

    fn store() -> CredentialStore {
        CredentialStore::new(
            crate::credentials::Credentials::from_parts("ak", b"s", ACCT, "Openapi", "test")
                .unwrap(),
        )
    }

    fn layer() -> ImageImportLayer {
        ImageImportLayer::new(store(), 64 * 1024)
    }

    #[tokio::test]
    async fn valid_import_is_forwarded_byte_identical() {
        let body = good_body();
        let req = routed_request(
            "virtualserver",
            "POST",
            PATH,
            crate::body::full(body.clone()),
        );
        let (res, seen) = call_recorded(layer(), req).await;
        assert!(res.is_ok());
        let got = seen.requests.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, body.as_bytes());
        assert_eq!(
            got[0].0.headers[header::CONTENT_LENGTH],
            body.len().to_string()
        );
        assert_eq!(got[0].0.uri.path(), PATH);
    }

    #[tokio::test]
    async fn rejects_never_call_inner() {
        let other = "fedcba9876543210fedcba9876543210";
        let url = |u: &str| format!(r#"{{"url":"{u}"}}"#);
        let host = "https://object-store.kr-west1.e.samsungsdscloud.com";
        for (path, body, code) in [
            (
                PATH,
                url(&format!("{host}/{ACCT}:b/x.QCOW2")),
                "url_not_qcow2",
            ),
            (
                PATH,
                url(&format!(
                    "http://object-store.kr-west1.e.samsungsdscloud.com/{ACCT}:b/x.qcow2"
                )),
                "url_not_https",
            ),
            (
                PATH,
                url(&format!("{host}/{other}:b/x.qcow2")),
                "url_wrong_account",
            ),
            (
                PATH,
                url(&format!(
                    "https://object-store.kr-east1.e.samsungsdscloud.com/{ACCT}:b/x.qcow2"
                )),
                "url_wrong_region",
            ),
            (PATH, "{}".into(), "url_missing"),
            (PATH, "not json".into(), "invalid_json"),
            (
                PATH,
                format!(r#"{{"url":"{host}/b/x.qcow2","url":"{host}/b/y.qcow2"}}"#),
                "duplicate_key",
            ),
            (
                "/v1/images",
                url("https://evil.example/x.qcow2"),
                "url_wrong_host",
            ),
            (
                "/v1/images/img-1/import/",
                url("https://evil.example/x.qcow2"),
                "url_wrong_host",
            ),
        ] {
            let req = routed_request(
                "virtualserver",
                "POST",
                path,
                crate::body::full(body.clone()),
            );
            let (res, seen) = call_recorded(layer(), req).await;
            let e = res.expect_err(&body);
            assert_eq!(e.code(), code, "{body}");
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
            assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "{body}");
        }
    }

    #[tokio::test]
    async fn body_bound() {
        let limit = 1024;
        let small = ImageImportLayer::new(store(), limit);
        // declared too large: refused before reading
        let mut req = routed_request(
            "virtualserver",
            "POST",
            PATH,
            crate::body::full(good_body()),
        );
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(limit + 1));
        let (res, seen) = call_recorded(small.clone(), req).await;
        let e = res.unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), ("body_too_large", 413));
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
        // undeclared, grows past the bound
        let big = format!(r#"{{"url":"x","pad":"{}"}}"#, "a".repeat(limit));
        let req = routed_request("virtualserver", "POST", PATH, crate::body::full(big));
        let (res, seen) = call_recorded(small.clone(), req).await;
        assert_eq!(res.unwrap_err().code(), "body_too_large");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
        // exactly at the bound is read (and judged on its content)
        let pad = limit - r#"{"p":""}"#.len();
        let exact = format!(r#"{{"p":"{}"}}"#, "a".repeat(pad));
        assert_eq!(exact.len(), limit);
        let req = routed_request("virtualserver", "POST", PATH, crate::body::full(exact));
        let (res, _) = call_recorded(small, req).await;
        assert_eq!(res.unwrap_err().code(), "url_missing");
    }

    #[tokio::test]
    async fn encoded_bodies_are_refused() {
        let mut req = routed_request(
            "virtualserver",
            "POST",
            PATH,
            crate::body::full(good_body()),
        );
        req.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (res, seen) = call_recorded(layer(), req).await;
        assert_eq!(res.unwrap_err().code(), "body_encoded");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
        // A harmless first value must not hide a second header or list item.
        for values in [&["identity", "br"][..], &["identity, gzip"][..]] {
            let mut req = routed_request(
                "virtualserver",
                "POST",
                PATH,
                crate::body::full(good_body()),
            );
            for v in values {
                req.headers_mut()
                    .append(header::CONTENT_ENCODING, HeaderValue::from_static(v));
            }
            let (res, seen) = call_recorded(layer(), req).await;
            assert_eq!(res.unwrap_err().code(), "body_encoded", "{values:?}");
            assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
        }
        let mut req = routed_request(
            "virtualserver",
            "POST",
            PATH,
            crate::body::full(good_body()),
        );
        req.headers_mut().insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(call_recorded(layer(), req).await.0.is_ok());
    }

    #[tokio::test]
    async fn other_routes_and_services_pass_untouched() {
        for (svc, method, path) in [
            ("virtualserver", "GET", PATH),
            ("virtualserver", "POST", "/v1/servers"),
            ("iam", "POST", PATH),
        ] {
            let req = routed_request(svc, method, path, crate::body::full("not json"));
            let (res, seen) = call_recorded(layer(), req).await;
            assert!(res.is_ok(), "{svc} {method} {path}");
            assert_eq!(seen.requests.lock().unwrap()[0].1, "not json");
        }
        // a service under another name whose upstream is virtualserver is inspected
        let mut vs = service("vs");
        vs.upstream =
            crate::config::Upstream::parse("https://virtualserver.kr-west1.e.samsungsdscloud.com")
                .unwrap();
        let req = routed_request_for(vs, "POST", PATH, crate::body::full("not json"));
        let (res, _) = call_recorded(layer(), req).await;
        assert_eq!(res.unwrap_err().code(), "invalid_json");
    }
}
