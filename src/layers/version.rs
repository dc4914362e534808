//! Version pin: every request carries the `Scp-Api-Version` pinned for its operation.
//!
//! The pin that applies is the first `services.NAME.operation_versions` entry whose
//! `METHOD /path` rule matches the request (method and service-relative raw path), else the
//! service's `api_version`.
//!
//! Guarantees: a request without the header gets `<service> <pin>`; one whose trimmed value is
//! exactly that passes (normalised to it); anything else is refused with 400
//! `api_version_mismatch` naming the sent and the applicable pin and the config key it comes
//! from, and the inner service is never called, so nothing goes upstream.
//! The pin is the routed target's: the layer takes only a routed request, so it cannot run
//! before routing and silently pass.

use std::task::{Context, Poll};

use http::HeaderName;
use tower::{Layer, Service};

use super::{pass, reject, Reject};
use crate::error::ProxyError;
use crate::policy::PolicyError;
use crate::target::RoutedRequest;

pub(crate) const SCP_API_VERSION: HeaderName = HeaderName::from_static("scp-api-version");

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VersionPinLayer;

impl<S> Layer<S> for VersionPinLayer {
    type Service = VersionPin<S>;
    fn layer(&self, inner: S) -> Self::Service {
        VersionPin { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct VersionPin<S> {
    inner: S,
}

impl<S, B> Service<RoutedRequest<B>> for VersionPin<S>
where
    S: Service<RoutedRequest<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Reject<S::Future, S::Response, ProxyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: RoutedRequest<B>) -> Self::Future {
        let (target, req) = routed.parts_mut();
        let op = target
            .config
            .operation_versions
            .iter()
            .position(|o| o.rule.matches(req.method().as_str(), req.uri().path()));
        let pinned = match op {
            Some(i) => &target.operation_version_headers[i],
            None => &target.version_header,
        };
        let mut sent = req.headers().get_all(&SCP_API_VERSION).iter();
        let verdict = match (sent.next(), sent.next()) {
            (None, _) => Ok(()),
            (Some(v), None) if v.as_bytes().trim_ascii() == pinned.as_bytes() => Ok(()),
            (Some(v), _) => Err(PolicyError::ApiVersionMismatch {
                service: target.name().to_owned(),
                sent: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                pinned: String::from_utf8_lossy(pinned.as_bytes()).into_owned(),
                operation: format!("{} {}", req.method(), req.uri().path()),
                rule: target
                    .config
                    .pin_key(op.map(|i| &target.config.operation_versions[i])),
            }),
        };
        match verdict {
            Ok(()) => {
                let pinned = pinned.clone();
                req.headers_mut().insert(SCP_API_VERSION, pinned);
                pass(self.inner.call(routed))
            }
            Err(e) => reject(ProxyError::Policy(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{call_recorded, routed_request};
    use http::HeaderValue;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn injects_passes_or_refuses() {
        for (sent, want) in [
            (vec![], Ok("virtualserver 1.3")),
            (vec!["virtualserver 1.3"], Ok("virtualserver 1.3")),
            (vec!["  virtualserver 1.3\t"], Ok("virtualserver 1.3")),
            (vec!["virtualserver 1.2"], Err(())),
            (vec!["iam 1.3"], Err(())),
            (vec!["v1.3"], Err(())),
            (vec!["1.3"], Err(())),
            (vec!["virtualserver  1.3"], Err(())),
            (vec!["VIRTUALSERVER 1.3"], Err(())),
            (vec!["garbage"], Err(())),
            (vec![""], Err(())),
            (vec!["virtualserver 1.3", "virtualserver 1.3"], Err(())),
        ] {
            let mut req =
                routed_request("virtualserver", "GET", "/v1/images", crate::body::empty());
            for v in &sent {
                req.request_mut()
                    .headers_mut()
                    .append(SCP_API_VERSION, HeaderValue::from_str(v).unwrap());
            }
            let (res, seen) = call_recorded(VersionPinLayer, req).await;
            match want {
                Ok(header) => {
                    res.unwrap();
                    let got = seen.requests.lock().unwrap();
                    let values: Vec<_> =
                        got[0].0.headers.get_all(&SCP_API_VERSION).iter().collect();
                    assert_eq!(values, vec![header], "{sent:?}");
                }
                Err(()) => {
                    let e = res.unwrap_err();
                    assert_eq!(e.code(), "api_version_mismatch", "{sent:?}");
                    assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
                    assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "{sent:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn message_names_sent_and_pinned() {
        let mut req = routed_request("virtualserver", "GET", "/v1/images", crate::body::empty());
        req.request_mut().headers_mut().insert(
            SCP_API_VERSION,
            HeaderValue::from_static("virtualserver 1.1"),
        );
        let (res, _) = call_recorded(VersionPinLayer, req).await;
        let m = res.unwrap_err().message();
        assert!(
            m.contains("\"virtualserver 1.1\"") && m.contains("\"virtualserver 1.3\""),
            "{m}"
        );
    }

    #[tokio::test]
    async fn operation_pins_apply_first_match_else_the_service_pin() {
        use crate::config::OperationVersion;
        use crate::layers::test_support::{routed_request_for, service};
        use crate::policy::allowlist::Rule;
        let mut cfg = service("virtualserver");
        for (rule, version) in [
            ("DELETE /v1/servers/*/security-groups/*", "1.0"),
            ("POST /v1/servers/*/security-groups", "1.0"),
            ("POST /v1/servers/**", "1.2"),
        ] {
            cfg.operation_versions.push(OperationVersion {
                rule: Rule::parse(rule).unwrap(),
                version: version.into(),
            });
        }
        for (method, path, sent, want) in [
            ("POST", "/v1/servers/s1/security-groups", None, Ok("virtualserver 1.0")),
            ("POST", "/v1/servers/s1/security-groups", Some("virtualserver 1.0"), Ok("virtualserver 1.0")),
            ("DELETE", "/v1/servers/s1/security-groups/g", None, Ok("virtualserver 1.0")),
            ("POST", "/v1/servers/s1/start", Some("virtualserver 1.2"), Ok("virtualserver 1.2")),
            ("GET", "/v1/servers/s1/security-groups", None, Ok("virtualserver 1.3")),
            ("GET", "/v1/images", Some("virtualserver 1.3"), Ok("virtualserver 1.3")),
            (
                "POST",
                "/v1/servers/s1/security-groups",
                Some("virtualserver 1.3"),
                Err("services.virtualserver.operation_versions.\"POST /v1/servers/*/security-groups\""),
            ),
            ("GET", "/v1/images", Some("virtualserver 1.0"), Err("services.virtualserver.api_version")),
        ] {
            let mut req = routed_request_for(cfg.clone(), method, path, crate::body::empty());
            if let Some(v) = sent {
                req.request_mut()
                    .headers_mut()
                    .insert(SCP_API_VERSION, HeaderValue::from_static(v));
            }
            let (res, seen) = call_recorded(VersionPinLayer, req).await;
            match want {
                Ok(header) => {
                    res.unwrap();
                    let got = seen.requests.lock().unwrap();
                    assert_eq!(got[0].0.headers[&SCP_API_VERSION], header, "{method} {path}");
                }
                Err(rule) => {
                    let m = res.unwrap_err().message();
                    assert!(m.contains(rule), "{m}");
                    assert!(m.contains(&format!("{method} {path}")), "{m}");
                    assert!(m.contains(&format!("{:?}", sent.unwrap())), "{m}");
                    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
                }
            }
        }
    }
}
