//! Signing: sets the SCP authentication headers on the request that goes upstream.
//!
//! Guarantees: a fresh millisecond timestamp per request; the signature covers the exact URL
//! forwarded (upstream `scheme://authority` as configured + the raw path and query as the
//! request carries them, never decoded or re-encoded); exactly one each of `Scp-Accesskey`,
//! `Scp-Timestamp`, `Scp-Signature`, `Scp-ClientType`, and `Scp-AccountId` when an account id is
//! configured. The key pair is read from the [`CredentialStore`] per request, so a reload takes
//! effect on the next request while in-flight ones keep theirs. The URL signed is the routed
//! target's upstream: the layer takes only routed requests.

use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

use crate::credentials::CredentialStore;
use crate::signer::{timestamp_ms, SignInput};
use crate::target::RoutedRequest;

pub const SCP_ACCESSKEY: HeaderName = HeaderName::from_static("scp-accesskey");
pub const SCP_TIMESTAMP: HeaderName = HeaderName::from_static("scp-timestamp");
pub const SCP_SIGNATURE: HeaderName = HeaderName::from_static("scp-signature");
pub const SCP_CLIENTTYPE: HeaderName = HeaderName::from_static("scp-clienttype");
pub const SCP_ACCOUNTID: HeaderName = HeaderName::from_static("scp-accountid");

/// Signs requests with the credentials in `store`, at the time `clock` says.
#[derive(Clone, Debug)]
pub struct SignLayer {
    store: CredentialStore,
    clock: fn() -> SystemTime,
}

impl SignLayer {
    pub fn new(store: CredentialStore) -> Self {
        Self {
            store,
            clock: SystemTime::now,
        }
    }

    /// For tests: a fixed or skewed clock.
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }
}

impl<S> Layer<S> for SignLayer {
    type Service = Sign<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Sign {
            store: self.store.clone(),
            clock: self.clock,
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sign<S> {
    store: CredentialStore,
    clock: fn() -> SystemTime,
    inner: S,
}

impl<S, B> Service<RoutedRequest<B>> for Sign<S>
where
    S: Service<RoutedRequest<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: RoutedRequest<B>) -> Self::Future {
        let (target, req) = routed.parts_mut();
        // The base is the upstream exactly as configured (`Upstream::base`).
        sign_with_base(
            req,
            &target.config.upstream.base,
            &self.store,
            (self.clock)(),
        );
        self.inner.call(routed)
    }
}

/// Sets the auth headers on `req`, whose URI is already the absolute upstream URI (for clients
/// of the library that sign outside the proxy's stack).
pub fn sign_request<B>(req: &mut Request<B>, store: &CredentialStore, now: SystemTime) {
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let authority = req.uri().authority().map_or("", |a| a.as_str());
    let base = format!("{scheme}://{authority}");
    sign_with_base(req, &base, store, now);
}

/// Signs `base` followed by the request's raw path and query.
fn sign_with_base<B>(req: &mut Request<B>, base: &str, store: &CredentialStore, now: SystemTime) {
    let creds = store.current();
    let mut ts_buf = itoa::Buffer::new();
    let ts = ts_buf.format(timestamp_ms(now));
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let signature = creds.key.sign(&SignInput {
        method: req.method().as_str(),
        url_parts: &[base, pq],
        timestamp: ts,
        access_key: &creds.access_key,
        account_id: &creds.account_id,
        client_type: &creds.client_type,
    });
    let h = req.headers_mut();
    h.insert(SCP_ACCESSKEY, creds.access_key_header.clone());
    // Digits and base64 are always valid header bytes.
    h.insert(
        SCP_TIMESTAMP,
        HeaderValue::from_str(ts).unwrap_or_else(|_| unreachable!()),
    );
    h.insert(
        SCP_SIGNATURE,
        HeaderValue::from_str(signature.as_str()).unwrap_or_else(|_| unreachable!()),
    );
    h.insert(SCP_CLIENTTYPE, creds.client_type_header.clone());
    match &creds.account_id_header {
        Some(a) => {
            h.insert(SCP_ACCOUNTID, a.clone());
        }
        None => {
            h.remove(SCP_ACCOUNTID);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credentials;

    #[test]
    fn signs_absolute_uri_without_route() {
        let store = CredentialStore::new(
            Credentials::from_parts("ak", b"s3cr3t", "acct-1", "Openapi", "test").unwrap(),
        );
        let mut req = Request::get("https://virtualserver.kr-west1.e.samsungsdscloud.com/v1/images?limit=10&marker=abc&sort=created_at%3Adesc")
            .body(())
            .unwrap();
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1764190000456);
        sign_request(&mut req, &store, now);
        let h = req.headers();
        assert_eq!(h[&SCP_TIMESTAMP], "1764190000456");
        assert_eq!(h[&SCP_ACCESSKEY], "ak");
        assert_eq!(h[&SCP_ACCOUNTID], "acct-1");
        assert_eq!(h[&SCP_CLIENTTYPE], "Openapi");
        let expected = crate::signer::sign(
            b"s3cr3t",
            "GET",
            "https://virtualserver.kr-west1.e.samsungsdscloud.com/v1/images?limit=10&marker=abc&sort=created_at%3Adesc",
            "1764190000456",
            "ak",
            "acct-1",
            "Openapi",
        );
        assert_eq!(h[&SCP_SIGNATURE], expected.as_str());
    }
}
