//! Header hygiene: the upstream sees only headers the proxy means to send.
//!
//! Guarantees, for every request, with header names compared case-insensitively and `_` read as
//! `-` (some gateways fold one into the other, so `Scp_Signature` *is* `Scp-Signature`): each
//! client-sent `Scp-*` header except `Scp-Api-Version`, and `X-Auth-Token` and `Authorization`,
//! is removed (the signing layer sets its own); hop-by-hop headers (`Connection` and every name
//! it lists, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Upgrade`, `Transfer-Encoding`) are
//! removed; any other spelling of `Scp-Api-Version` (`scp_api-version`) is the client's version
//! header, folded into `Scp-Api-Version` for the pin to check, so it never reaches the upstream
//! beside the pinned one; `Host` is the upstream's authority; `Accept-Language` defaults to
//! `en-US`. Responses lose their hop-by-hop headers, in any spelling, on the way back.
//! It runs on routed requests (it needs the target's `Host`), above every policy layer, so the
//! policies judge the headers that will be sent.

use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Response};
use tower::{Layer, Service};

use crate::target::RoutedRequest;

static ACCEPT_LANGUAGE_DEFAULT: HeaderValue = HeaderValue::from_static("en-US");
const SCP_API_VERSION: HeaderName = HeaderName::from_static("scp-api-version");

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
        clean_request(headers);
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

/// What hygiene does with one header, decided on its normalised name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Drop,
    /// A second spelling of `Scp-Api-Version`: its values join the real header, which the
    /// version pin then checks (two values are refused), so it never travels beside the pin.
    Version,
}

/// Classifies a (lower-case) header name, reading `_` as `-`: `Scp_Signature`,
/// `scp_api-version` and `Transfer_Encoding` are the headers they spell.
fn verdict(name: &str) -> Verdict {
    if !name.as_bytes().contains(&b'_') {
        return if is_hop_by_hop(name) || is_credential_name(name) {
            Verdict::Drop
        } else {
            Verdict::Keep
        };
    }
    let folded = name.replace('_', "-");
    if is_hop_by_hop(&folded) || is_credential_name(&folded) {
        Verdict::Drop
    } else if folded == SCP_API_VERSION.as_str() {
        Verdict::Version
    } else {
        Verdict::Keep
    }
}

/// `name` lower-cased with `_` read as `-`, for comparing names a `Connection` header lists.
fn normalised(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

/// Request headers as the upstream should see them: hop-by-hop headers (and every name
/// `Connection` lists) and client credentials removed, other spellings of `Scp-Api-Version`
/// folded into it. One scan over the (usually few) headers when there is nothing to do.
pub(crate) fn clean_request(headers: &mut HeaderMap) {
    clean(headers, true);
}

/// Removes `Connection`, the headers it names, and the standard hop-by-hop headers, in any
/// spelling. Used on responses.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    clean(headers, false);
}

fn clean(headers: &mut HeaderMap, request: bool) {
    let acts = |name: &str| -> Verdict {
        match verdict(name) {
            Verdict::Drop if !request && !is_hop_by_hop(&normalised(name)) => Verdict::Keep,
            Verdict::Version if !request => Verdict::Keep,
            v => v,
        }
    };
    if !headers.contains_key(header::CONNECTION)
        && headers.keys().all(|k| acts(k.as_str()) == Verdict::Keep)
    {
        return;
    }
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(normalised)
        .filter(|n| !n.is_empty())
        .collect();
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut folded: Vec<HeaderName> = Vec::new();
    for k in headers.keys() {
        match acts(k.as_str()) {
            Verdict::Drop => doomed.push(k.clone()),
            Verdict::Version => folded.push(k.clone()),
            Verdict::Keep if !listed.is_empty() && listed.contains(&normalised(k.as_str())) => {
                doomed.push(k.clone())
            }
            Verdict::Keep => {}
        }
    }
    for n in folded {
        let values: Vec<HeaderValue> = headers.get_all(&n).iter().cloned().collect();
        headers.remove(&n);
        for v in values {
            headers.append(SCP_API_VERSION, v);
        }
    }
    for n in doomed {
        headers.remove(n);
    }
}

fn is_hop_by_hop(n: &str) -> bool {
    matches!(
        n,
        "connection" | "keep-alive" | "te" | "trailer" | "upgrade" | "transfer-encoding"
    ) || n.starts_with("proxy-")
}

/// Credentials the client may have sent (by normalised name); the proxy sets its own later.
fn is_credential_name(n: &str) -> bool {
    n == "authorization"
        || n == "x-auth-token"
        || n.starts_with("scp-") && n != SCP_API_VERSION.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

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
        for n in ["scp_signature", "x_auth_token", "authorization_"] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "forged".parse().unwrap(),
            );
        }
        h.insert("x_keep", "1".parse().unwrap());
        h.insert("scp-api-version", "virtualserver 1.3".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        clean_request(&mut h);
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(h.contains_key("scp-api-version") && h.contains_key("content-type"));
        // Not a credential once folded: kept.
        assert!(h.contains_key("x_keep") && h.contains_key("authorization_"));
    }

    #[test]
    fn other_version_spellings_join_the_version_header() {
        let mut h = HeaderMap::new();
        h.append("scp-api-version", "virtualserver 1.3".parse().unwrap());
        h.append("scp_api-version", "virtualserver 1.2".parse().unwrap());
        h.append("scp-api_version", "virtualserver 1.1".parse().unwrap());
        clean_request(&mut h);
        let got: Vec<_> = h.get_all("scp-api-version").iter().collect();
        assert_eq!(
            got,
            [
                "virtualserver 1.3",
                "virtualserver 1.2",
                "virtualserver 1.1"
            ]
        );
        assert_eq!(h.len(), 3, "{h:?}");
        // Alone, it is the client's version header.
        let mut h = HeaderMap::new();
        h.append("scp_api_version", "virtualserver 1.3".parse().unwrap());
        clean_request(&mut h);
        assert_eq!(h["scp-api-version"], "virtualserver 1.3");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn connection_listed_names_match_in_any_spelling() {
        let mut h = HeaderMap::new();
        h.insert("connection", "X_Foo, x-bar".parse().unwrap());
        h.insert("x-foo", "1".parse().unwrap());
        h.insert("x_bar", "1".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        clean_request(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn responses_keep_credential_looking_headers_but_lose_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("keep_alive", "timeout=5".parse().unwrap());
        h.insert("transfer_encoding", "chunked".parse().unwrap());
        h.insert("scp-request-id", "1".parse().unwrap());
        h.insert("scp_api-version", "x".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("scp-request-id") && h.contains_key("scp_api-version"));
    }

    /// Every spelling of `name`: each letter in either case, each `-` as `-` or `_`.
    fn spelling(name: &'static str) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(any::<(bool, bool)>(), name.len()).prop_map(move |flips| {
            name.chars()
                .zip(flips)
                .map(|(c, (upper, under))| match c {
                    '-' if under => '_',
                    c if upper => c.to_ascii_uppercase(),
                    c => c,
                })
                .collect()
        })
    }

    const DROPPED: &[&str] = &[
        "scp-accesskey",
        "scp-signature",
        "scp-timestamp",
        "scp-clienttype",
        "scp-accountid",
        "scp-some-future-header",
        "authorization",
        "x-auth-token",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ];

    proptest::proptest! {
        #[test]
        fn every_spelling_of_a_credential_or_hop_by_hop_header_is_dropped(
            (i, name) in (0..DROPPED.len()).prop_flat_map(|i| (proptest::strategy::Just(i), spelling(DROPPED[i])))
        ) {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), "forged".parse().unwrap());
            h.insert("x-keep", "1".parse().unwrap());
            clean_request(&mut h);
            proptest::prop_assert_eq!(h.len(), 1, "{} ({}): {:?}", name, DROPPED[i], h);
            proptest::prop_assert!(h.contains_key("x-keep"));
        }

        #[test]
        fn every_spelling_of_the_version_header_is_the_version_header(
            name in spelling("scp-api-version"),
            pinned_too in proptest::bool::ANY,
        ) {
            let mut h = HeaderMap::new();
            if pinned_too {
                h.insert("scp-api-version", "virtualserver 1.3".parse().unwrap());
            }
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), "virtualserver 1.2".parse().unwrap());
            clean_request(&mut h);
            // Only the real header remains, holding every value the client sent.
            proptest::prop_assert!(h.keys().all(|k| k == "scp-api-version"), "{:?}", h);
            let values: Vec<_> = h.get_all("scp-api-version").iter().collect();
            proptest::prop_assert!(values.contains(&&http::HeaderValue::from_static("virtualserver 1.2")));
            let expected = if pinned_too { 2 } else { 1 };
            proptest::prop_assert_eq!(values.len(), expected, "{:?}", h);
        }
    }
}
