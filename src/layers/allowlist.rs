//! Operation allowlist: on a service with `allow = [...]`, only the listed operations go
//! upstream.
//!
//! Guarantees, on such a service: a path with `.`/`..` segments or an encoded `/`, `.` or `\`
//! is refused with 400 `path_not_canonical`; a method and raw path (after the service prefix is
//! stripped) that match no rule are refused with 403 `operation_not_allowed`, naming the service
//! and its rules. Either way the inner service is never called. Every decision is counted in
//! `scp_auth_proxy_allowlist_decisions_total{service, rule}` (`rule="none"`: refused). Services
//! without `allow` pass everything through uncounted.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use prometheus_client::metrics::counter::Counter;
use tower::{Layer, Service};

use super::{reject, Reject};
use crate::config::ServiceConfig;
use crate::error::ProxyError;
use crate::metrics::{Metrics, RuleLabel};
use crate::policy::allowlist::{Allowlist, Decision};
use crate::policy::PolicyError;
use crate::route::Routed;

/// A service's rules with their decision counters, created at start so counting a request
/// allocates nothing.
#[derive(Debug)]
struct Counted {
    list: Allowlist,
    /// One per rule, in rule order.
    allowed: Vec<Counter>,
    refused: Counter,
}

/// Per service, in configuration order (the routing table's order, so a request's
/// `Target::index` finds its entry without hashing); `None` where a service has no allowlist.
type Lists = Arc<[(String, Option<Counted>)]>;

#[derive(Clone, Debug)]
pub struct OperationAllowlistLayer {
    lists: Lists,
}

impl OperationAllowlistLayer {
    /// Parses every service's `allow`; the error names the service and the rule.
    pub fn new(services: &[ServiceConfig], metrics: Metrics) -> Result<Self, String> {
        let mut lists = Vec::with_capacity(services.len());
        for s in services {
            let mut counted = None;
            if let Some(rules) = &s.allow {
                let list = Allowlist::parse(rules)
                    .map_err(|m| format!("services.{}.allow: {m}", s.name))?;
                let counter = |rule: &str| {
                    metrics
                        .allowlist
                        .get_or_create(&RuleLabel {
                            service: s.name.clone(),
                            rule: rule.to_owned(),
                        })
                        .clone()
                };
                let allowed = list.rules.iter().map(|r| counter(&r.text)).collect();
                let refused = counter("none");
                counted = Some(Counted {
                    list,
                    allowed,
                    refused,
                });
            }
            lists.push((s.name.clone(), counted));
        }
        Ok(Self {
            lists: lists.into(),
        })
    }
}

impl<S> Layer<S> for OperationAllowlistLayer {
    type Service = OperationAllowlist<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OperationAllowlist {
            lists: self.lists.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct OperationAllowlist<S> {
    lists: Lists,
    inner: S,
}

impl<S> OperationAllowlist<S> {
    fn decide<B>(&self, req: &Request<B>) -> Result<(), PolicyError> {
        let Some(routed) = req.extensions().get::<Routed>() else {
            return Ok(());
        };
        let service = routed.target.name();
        let entry = match self.lists.get(routed.target.index) {
            Some(e) if e.0 == service => Some(e),
            _ => self.lists.iter().find(|e| e.0 == service),
        };
        let Some((_, Some(counted))) = entry else {
            return Ok(());
        };
        let list = &counted.list;
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
}

impl<S, B> Service<Request<B>> for OperationAllowlist<S>
where
    S: Service<Request<B>, Error = ProxyError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Reject<S::Future, S::Response, ProxyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.decide(&req) {
            Ok(()) => futures_util::future::Either::Left(self.inner.call(req)),
            Err(e) => reject(ProxyError::Policy(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{call_counted, routed_request, service};
    use std::sync::atomic::Ordering;

    fn layer(metrics: &Metrics) -> OperationAllowlistLayer {
        let mut vs = service("virtualserver");
        vs.allow = Some(vec![
            "GET /v1/images/**".into(),
            "POST /v1/images/*/import".into(),
        ]);
        OperationAllowlistLayer::new(&[vs, service("iam")], metrics.clone()).unwrap()
    }

    #[tokio::test]
    async fn refuses_outside_the_list_without_calling_inner() {
        let metrics = Metrics::new();
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
            let req = routed_request(svc, method, path, crate::body::empty());
            let (res, called) = call_counted(layer(&metrics), req).await;
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
        let req = routed_request(
            "virtualserver",
            "DELETE",
            "/v1/images/abc",
            crate::body::empty(),
        );
        let (res, _) = call_counted(layer(&Metrics::new()), req).await;
        let e = res.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        let m = e.message();
        assert!(
            m.contains("virtualserver")
                && m.contains(r#"["GET /v1/images/**", "POST /v1/images/*/import"]"#),
            "{m}"
        );
    }

    #[test]
    fn bad_rules_name_the_service() {
        let mut vs = service("virtualserver");
        vs.allow = Some(vec!["GET v1".into()]);
        let e = OperationAllowlistLayer::new(&[vs], Metrics::new()).unwrap_err();
        assert!(e.contains("services.virtualserver.allow"), "{e}");
    }
}
