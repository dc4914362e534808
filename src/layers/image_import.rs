//! Image import validation: the body of an image import (or image creation) is read, checked
//! and forwarded byte-identical, or refused.
//!
//! Applies to services that are SCP's virtualserver ([`crate::target::is_image_service`]). On those, for `POST /v1/images/{image_id}/import` and
//! `POST /v1/images` (recognised generously, see [`crate::policy::image_import`]):
//! - a `Content-Length` above `server.max_inspected_body_bytes`, or a body that grows past it:
//!   413 `body_too_large`, without reading further;
//! - a body not complete within the service's `timeout`: 408 `body_timeout`;
//! - a `Content-Encoding` other than `identity`: 415 `body_encoded`;
//! - a body the client breaks off or mis-frames while it is read: 400 `client_aborted` /
//!   `client_body_invalid`, as when a body is forwarded;
//! - a body that breaks a rule: 400 with that rule's code;
//! - otherwise the exact bytes received go on, with a matching `Content-Length`.
//!
//! On every refusal the inner service is never called, so nothing goes upstream. Whether a
//! service is inspected is decided once at start ([`crate::target::Target::image_import`]);
//! the layer takes only routed requests, so it cannot run before routing and skip the check.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use tower::{Layer, Service};

use super::ReqBody;
use crate::credentials::{CredentialStore, Credentials};
use crate::error::{ClientFailure, ProxyError};
use crate::policy::image_import::{self, Operation};
use crate::policy::image_url::Expect;
use crate::policy::PolicyError;
use crate::target::RoutedRequest;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug)]
pub(crate) struct ImageImportLayer {
    credentials: CredentialStore,
    max_body: usize,
}

impl ImageImportLayer {
    /// `credentials`: the store the signer uses, so the account a URL must belong to follows
    /// a reload ("" when none: URLs' accounts are not compared); `max_body`:
    /// `server.max_inspected_body_bytes`.
    pub(crate) fn new(credentials: CredentialStore, max_body: usize) -> Self {
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
pub(crate) struct ImageImport<S> {
    credentials: CredentialStore,
    max_body: usize,
    inner: S,
}

impl<S, B> Service<RoutedRequest<ReqBody<B>>> for ImageImport<S>
where
    S: Service<RoutedRequest<ReqBody<B>>, Error = ProxyError> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = ImageImportFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: RoutedRequest<ReqBody<B>>) -> Self::Future {
        let req = routed.request();
        let op = routed
            .target()
            .image_import
            .as_ref()
            .and_then(|_| image_import::operation(req.method().as_str(), req.uri().path()));
        let Some(op) = op else {
            return ImageImportFuture::Pass {
                inner: self.inner.call(routed),
            };
        };
        if let Err(e) = check_head(req.headers(), self.max_body, op) {
            return ImageImportFuture::Refused {
                error: Some(e.into()),
            };
        }
        let timeout = routed.target().config.timeout;
        let mut body = None;
        let head = routed.map_request(|r| {
            let (parts, b) = r.into_parts();
            body = Some(b);
            Request::from_parts(parts, ())
        });
        let Some(body) = body else {
            unreachable!("map_request runs its closure")
        };
        // The ready inner service goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ImageImportFuture::Reading {
            read: tokio::time::timeout(timeout, Limited::new(body, self.max_body).collect()),
            pending: Some(Pending {
                inner,
                head,
                op,
                max_body: self.max_body,
                credentials: self.credentials.snapshot(),
            }),
        }
    }
}

/// What an inspected request needs once its body is read.
pub(crate) struct Pending<S> {
    inner: S,
    head: RoutedRequest<()>,
    op: Operation,
    max_body: usize,
    credentials: Arc<Credentials>,
}

type Read<B> = tokio::time::Timeout<Collect<Limited<ReqBody<B>>>>;

pin_project_lite::pin_project! {
    /// Passes straight through, or reads the body (bounded in size and time), checks it and
    /// then calls the inner service with the exact bytes read; no box.
    #[project = Proj]
    pub enum ImageImportFuture<S, B>
    where
        S: Service<RoutedRequest<ReqBody<B>>>,
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        Pass { #[pin] inner: S::Future },
        Reading { #[pin] read: Read<B>, pending: Option<Pending<S>> },
        Calling { #[pin] inner: S::Future },
        Refused { error: Option<ProxyError> },
    }
}

impl<S, B> Future for ImageImportFuture<S, B>
where
    S: Service<RoutedRequest<ReqBody<B>>, Error = ProxyError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                Proj::Pass { inner } | Proj::Calling { inner } => return inner.poll(cx),
                Proj::Refused { error } => {
                    return match error.take() {
                        Some(e) => Poll::Ready(Err(e)),
                        None => Poll::Pending,
                    }
                }
                Proj::Reading { read, pending } => {
                    let out = std::task::ready!(read.poll(cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Pending;
                    };
                    match pending.finish(out) {
                        Ok(inner) => ImageImportFuture::Calling { inner },
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            };
            self.set(next);
        }
    }
}

impl<S> Pending<S> {
    /// Judges the body read and, when it passes, hands exactly those bytes to the inner
    /// service.
    fn finish<B>(
        mut self,
        read: Result<
            Result<http_body_util::Collected<Bytes>, BoxError>,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<S::Future, ProxyError>
    where
        S: Service<RoutedRequest<ReqBody<B>>, Error = ProxyError>,
    {
        let target = self.head.target();
        let svc = &target.config;
        let bytes = match read {
            Err(_) => Err(PolicyError::BodyTimeout {
                service: svc.name.clone(),
                timeout: svc.timeout,
            }
            .into()),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(PolicyError::BodyTooLarge {
                    limit: self.max_body,
                    operation: self.op.describe(),
                }
                .into())
            }
            // The client's failure (it went away, or broke the framing), as for a body
            // being forwarded: a `client_*` code, 4xx, logged at debug.
            Ok(Err(e)) => Err(ProxyError::ClientBodyUnread {
                service: svc.name.clone(),
                failure: ClientFailure::of(&*e),
                source: e,
            }),
        }?;
        let policy = target.image_import.as_ref();
        let expect = Expect {
            region: policy.and_then(|p| p.region.as_deref()),
            env: policy.and_then(|p| p.env.as_deref()),
            account_id: Some(&self.credentials.account_id),
        };
        image_import::check_body(self.op, &bytes, &expect)?;
        let req = self.head.map_request(|r| {
            let (mut parts, ()) = r.into_parts();
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Request::from_parts(parts, Either::Right(Full::new(bytes)))
        });
        Ok(self.inner.call(req))
    }
}

/// What can be refused before reading: an encoded body, or one declared too large.
fn check_head(headers: &HeaderMap, max: usize, op: Operation) -> Result<(), PolicyError> {
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
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(PolicyError::BodyTooLarge {
            limit: max,
            operation,
        });
    }
    Ok(())
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
        req.request_mut()
            .headers_mut()
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
        req.request_mut()
            .headers_mut()
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
                req.request_mut()
                    .headers_mut()
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
        req.request_mut().headers_mut().insert(
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
