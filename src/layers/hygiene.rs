//! Header hygiene: the upstream sees only headers the proxy means to send.
//!
//! Guarantees, for every request: each client-sent `Scp-*` header except `Scp-Api-Version`,
//! and `X-Auth-Token` and `Authorization`, is removed (the signing layer sets its own); hop-by-hop
//! headers (`Connection` and every name it lists, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
//! `Upgrade`, `Transfer-Encoding`) are removed; `Host` is the upstream's authority;
//! `Accept-Language` defaults to `en-US`. Responses lose their hop-by-hop headers on the way back.
//! It runs on routed requests (it needs the target's `Host`), above every policy layer, so the
//! policies judge the headers that will be sent.

use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Response};
use tower::{Layer, Service};

use crate::target::RoutedRequest;

static ACCEPT_LANGUAGE_DEFAULT: HeaderValue = HeaderValue::from_static("en-US");

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeaderHygieneLayer;

impl<S> Layer<S> for HeaderHygieneLayer {
    type Service = HeaderHygiene<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HeaderHygiene { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct HeaderHygiene<S> {
    inner: S,
}

impl<S, B, RB> Service<RoutedRequest<B>> for HeaderHygiene<S>
where
    S: Service<RoutedRequest<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = HygieneFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: RoutedRequest<B>) -> Self::Future {
        let (target, req) = routed.parts_mut();
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        strip_client_credentials(headers);
        if !headers.contains_key(header::ACCEPT_LANGUAGE) {
            headers.insert(header::ACCEPT_LANGUAGE, ACCEPT_LANGUAGE_DEFAULT.clone());
        }
        headers.insert(header::HOST, target.host.clone());
        HygieneFuture {
            inner: self.inner.call(routed),
        }
    }
}

pin_project_lite::pin_project! {
    /// Strips hop-by-hop headers from the response once it arrives.
    pub struct HygieneFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, RB, E> std::future::Future for HygieneFuture<F>
where
    F: std::future::Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.poll(cx) {
            Poll::Ready(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                Poll::Ready(Ok(resp))
            }
            other => other,
        }
    }
}

/// Removes `Connection`, the headers it names, and the standard hop-by-hop headers. One scan
/// over the (usually few) headers when there is nothing to remove.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| is_hop_by_hop(k.as_str())) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    remove_matching(headers, is_hop_by_hop);
}

fn is_hop_by_hop(n: &str) -> bool {
    matches!(
        n,
        "connection" | "keep-alive" | "te" | "trailer" | "upgrade" | "transfer-encoding"
    ) || n.starts_with("proxy-")
}

/// Removes every credential the client may have sent; the proxy's own are set later. Names
/// are compared with `_` read as `-`, because some gateways fold `Scp_Signature` into
/// `Scp-Signature`.
pub(crate) fn strip_client_credentials(headers: &mut HeaderMap) {
    remove_matching(headers, |n| {
        is_credential_name(n) || n.contains('_') && is_credential_name(&n.replace('_', "-"))
    });
}

fn is_credential_name(n: &str) -> bool {
    n == "authorization"
        || n == "x-auth-token"
        || n.starts_with("scp-") && n != "scp-api-version"
        // A folded `Scp_Api_Version` is a second, unchecked version header: drop it too.
        || n == "scp_api_version"
}

/// Removes headers whose (lower-case) name matches; allocates only when one does.
fn remove_matching(headers: &mut HeaderMap, matches: impl Fn(&str) -> bool) {
    if !headers.keys().any(|k| matches(k.as_str())) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| matches(k.as_str()))
        .cloned()
        .collect();
    for n in doomed {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_listed_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Foo".parse().unwrap());
        h.insert("x-foo", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("trailer", "x".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn strips_client_credentials_but_keeps_api_version() {
        let mut h = HeaderMap::new();
        for n in [
            "scp-accesskey",
            "scp-signature",
            "scp-timestamp",
            "scp-clienttype",
            "scp-accountid",
            "scp-anything",
            "authorization",
            "x-auth-token",
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "forged".parse().unwrap(),
            );
        }
        h.append("scp-signature", "forged2".parse().unwrap());
        for n in [
            "scp_signature",
            "Scp_Api_Version",
            "x_auth_token",
            "authorization_",
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "forged".parse().unwrap(),
            );
        }
        h.insert("x_keep", "1".parse().unwrap());
        h.insert("scp-api-version", "virtualserver 1.3".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        strip_client_credentials(&mut h);
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(h.contains_key("scp-api-version") && h.contains_key("content-type"));
        // Not a credential once folded: kept.
        assert!(h.contains_key("x_keep") && h.contains_key("authorization_"));
    }
}
