//! Operation allowlist: on a service with `allow = [...]`, only the listed operations go
//! upstream.
//!
//! Guarantees, on such a service: a path with `.`/`..` segments or an encoded `/`, `.` or `\`
//! is refused with 400 `path_not_canonical`; a method and raw path (after the service prefix is
//! stripped) that match no rule are refused with 403 `operation_not_allowed`, naming the service
//! and its rules. Either way the inner service is never called. Every decision is counted in
//! `scp_auth_proxy_allowlist_decisions_total{service, rule}` (`rule="none"`: refused). Services
//! without `allow` pass everything through uncounted.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{pass, reject, Reject};
use crate::error::ProxyError;
use crate::policy::allowlist::Decision;
use crate::policy::PolicyError;
use crate::target::RoutedRequest;

/// The routed target's allowlist ([`crate::target::Target::allowlist`]), built and counted
/// per service at start.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OperationAllowlistLayer;

impl<S> Layer<S> for OperationAllowlistLayer {
    type Service = OperationAllowlist<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OperationAllowlist { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct OperationAllowlist<S> {
    inner: S,
}

fn decide<B>(routed: &RoutedRequest<B>) -> Result<(), PolicyError> {
    let target = routed.target();
    let Some(counted) = &target.allowlist else {
        return Ok(());
    };
    let req = routed.request();
    let list = &counted.list;
    let service = target.name();
    let (method, path) = (req.method().as_str(), req.uri().path());
    match list.decide(method, path) {
        Decision::Allowed(i) => {
            if let Some(c) = counted.allowed.get(i) {
                c.inc();
            }
            Ok(())
        }
        Decision::NotCanonical(reason) => {
            counted.refused.inc();
            Err(PolicyError::PathNotCanonical {
                service: service.to_owned(),
                path: path.to_owned(),
                reason,
            })
        }
        Decision::Refused => {
            counted.refused.inc();
            Err(PolicyError::OperationNotAllowed {
                service: service.to_owned(),
                method: method.to_owned(),
                path: path.to_owned(),
                rules: list.describe(),
            })
        }
    }
}

impl<S, B> Service<RoutedRequest<B>> for OperationAllowlist<S>
where
    S: Service<RoutedRequest<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Reject<S::Future, S::Response, ProxyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: RoutedRequest<B>) -> Self::Future {
        match decide(&req) {
            Ok(()) => pass(self.inner.call(req)),
            Err(e) => reject(ProxyError::Policy(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{allow, call_counted, routed, service, target_for};
    use crate::metrics::Metrics;
    use crate::target::Target;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    const LAYER: OperationAllowlistLayer = OperationAllowlistLayer;

    /// virtualserver with an allowlist, iam without.
    fn targets(metrics: &Metrics) -> [Arc<Target>; 2] {
        let mut vs = service("virtualserver");
        vs.allow = Some(allow(&["GET /v1/images/**", "POST /v1/images/*/import"]));
        [target_for(vs, metrics), target_for(service("iam"), metrics)]
    }

    #[tokio::test]
    async fn refuses_outside_the_list_without_calling_inner() {
        let metrics = Metrics::new();
        let [vs, iam] = targets(&metrics);
        for (svc, method, path, want) in [
            ("virtualserver", "GET", "/v1/images/abc", None),
            ("virtualserver", "POST", "/v1/images/abc/import", None),
            (
                "virtualserver",
                "DELETE",
                "/v1/images/abc",
                Some("operation_not_allowed"),
            ),
            (
                "virtualserver",
                "POST",
                "/v1/servers",
                Some("operation_not_allowed"),
            ),
            (
                "virtualserver",
                "GET",
                "/v1/images/../servers",
                Some("path_not_canonical"),
            ),
            (
                "virtualserver",
                "GET",
                "/v1/images/%2e%2e/servers",
                Some("path_not_canonical"),
            ),
            (
                "virtualserver",
                "GET",
                "/v1/images/a%2Fb",
                Some("path_not_canonical"),
            ),
            // no allowlist: everything passes, dot segments included
            ("iam", "DELETE", "/v1/anything/../x", None),
        ] {
            let target = if svc == "iam" { &iam } else { &vs };
            let req = routed(target, method, path, crate::body::empty());
            let (res, called) = call_counted(LAYER, req).await;
            match want {
                None => {
                    assert!(res.is_ok(), "{method} {path}");
                    assert_eq!(called.load(Ordering::SeqCst), 1, "{method} {path}");
                }
                Some(code) => {
                    let e = res.unwrap_err();
                    assert_eq!(e.code(), code, "{method} {path}");
                    assert_eq!(called.load(Ordering::SeqCst), 0, "{method} {path}");
                }
            }
        }
        let text = metrics.encode();
        assert!(text.contains(r#"scp_auth_proxy_allowlist_decisions_total{service="virtualserver",rule="GET /v1/images/**"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"scp_auth_proxy_allowlist_decisions_total{service="virtualserver",rule="none"} 5"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn message_names_service_and_rules() {
        let [vs, _] = targets(&Metrics::new());
        let req = routed(&vs, "DELETE", "/v1/images/abc", crate::body::empty());
        let (res, _) = call_counted(LAYER, req).await;
        let e = res.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        let m = e.message();
        assert!(
            m.contains("virtualserver")
                && m.contains(r#"["GET /v1/images/**", "POST /v1/images/*/import"]"#),
            "{m}"
        );
    }
}
