//! Required request header (`server.require_header`), against server-side request forgery.
//!
//! Anything that can reach the proxy's loopback port can have requests signed, including an app
//! tricked into fetching `http://127.0.0.1:8080/...` by a URL an attacker chose. A plain URL
//! fetch cannot add a custom header, so requiring one (as Vault Proxy's `X-Vault-Request` does)
//! means only code that means to call the proxy can.
//!
//! Guarantees: when configured, a request without the header (name compared case-insensitively;
//! any value, even empty) is answered 412 `missing_required_header` and the inner service is
//! never called; the header, in every spelling (`_` read as `-`), is removed before the request
//! goes on, so the upstream never sees it. When not configured, requests pass untouched.

use std::task::{Context, Poll};

use http::{HeaderName, Request};
use tower::{Layer, Service};

use super::{pass, reject, Reject};
use crate::error::ProxyError;

#[derive(Clone, Debug, Default)]
pub(crate) struct RequireHeaderLayer {
    header: Option<HeaderName>,
}

impl RequireHeaderLayer {
    /// `None`: no header required.
    pub(crate) fn new(header: Option<HeaderName>) -> Self {
        Self { header }
    }
}

impl<S> Layer<S> for RequireHeaderLayer {
    type Service = RequireHeader<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireHeader {
            header: self.header.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RequireHeader<S> {
    header: Option<HeaderName>,
    inner: S,
}

impl<S, B> Service<Request<B>> for RequireHeader<S>
where
    S: Service<Request<B>>,
    S::Error: From<ProxyError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Reject<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(required) = &self.header else {
            return pass(self.inner.call(req));
        };
        let headers = req.headers_mut();
        if headers.remove(required).is_none() {
            return reject(
                ProxyError::MissingRequiredHeader {
                    header: required.as_str().to_owned(),
                }
                .into(),
            );
        }
        // Other spellings (`x_scp_proxy`) would otherwise travel on as ordinary headers.
        let folded = |k: &HeaderName| {
            k.as_str().contains('_') && k.as_str().replace('_', "-") == required.as_str()
        };
        if headers.keys().any(folded) {
            let doomed: Vec<HeaderName> = headers.keys().filter(|k| folded(k)).cloned().collect();
            for k in doomed {
                headers.remove(k);
            }
        }
        pass(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

    /// The layer over an inner service that records the headers of each request it gets.
    async fn call(
        required: Option<&'static str>,
        headers: &[(&str, &str)],
    ) -> (Result<(), ProxyError>, Seen) {
        let seen = Seen::default();
        let record = seen.clone();
        let inner = tower::service_fn(move |req: Request<()>| {
            record.lock().unwrap().push(req.headers().clone());
            async { Ok::<_, ProxyError>(()) }
        });
        let mut req = Request::new(());
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let layer = RequireHeaderLayer::new(required.map(HeaderName::from_static));
        (layer.layer(inner).oneshot(req).await, seen)
    }

    #[tokio::test]
    async fn without_the_header_412_and_nothing_called() {
        for sent in [
            vec![],
            vec![("x_scp_proxy", "1")],
            vec![("x-scp-prox", "1")],
        ] {
            let (res, seen) = call(Some("x-scp-proxy"), &sent).await;
            let e = res.unwrap_err();
            assert_eq!(e.code(), "missing_required_header", "{sent:?}");
            assert_eq!(e.status(), http::StatusCode::PRECONDITION_FAILED);
            assert!(e.message().contains("x-scp-proxy"), "{}", e.message());
            assert!(seen.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn with_the_header_passes_without_it() {
        for name in ["X-Scp-Proxy", "x-scp-proxy"] {
            let sent = [(name, ""), ("x_scp_proxy", "again"), ("x-keep", "1")];
            let (res, seen) = call(Some("x-scp-proxy"), &sent).await;
            res.unwrap();
            let got = seen.lock().unwrap();
            assert_eq!(got[0].len(), 1, "{:?}", got[0]);
            assert!(got[0].contains_key("x-keep"));
        }
    }

    #[tokio::test]
    async fn unset_passes_untouched() {
        let (res, seen) = call(None, &[("x-scp-proxy", "1")]).await;
        res.unwrap();
        assert!(seen.lock().unwrap()[0].contains_key("x-scp-proxy"));
    }
}
