//! Routing (src/route.rs through `target::routes`, as the proxy builds it) on arbitrary
//! request lines.
//!
//! Input: `METHOD TARGET` on the first line, the HTTP version from the next byte. Asserts: no
//! panic; CONNECT, absolute-form (HTTP/1) and asterisk-form targets are refused with their
//! errors and nothing else is; a routed request points at its service's upstream (scheme and
//! authority as configured), as HTTP/1.1, same method; `/{service}/rest?q` goes to that
//! service as `/rest?q` (query byte for byte), any other path to the default service
//! unchanged, and without a default it is `no_route`; `split` agrees with `route`.
#![no_main]

use std::sync::OnceLock;

use http::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;
use scp_auth_proxy::config::{self, Config, Overrides, Source};
use scp_auth_proxy::error::ProxyError;

const TOML: &str = r#"
[credentials]
access_key = "ak"
[services.virtualserver]
upstream = "https://virtualserver.kr-west1.e.samsungsdscloud.com"
api_version = "1.3"
[services.iam]
upstream = "http://127.0.0.1:9"
api_version = "1.4"
[services.image_v2]
upstream = "https://[::1]:8443"
api_version = "1.0"
"#;

type Check = Box<dyn Fn(Request<()>) + Send + Sync>;

fn load(extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, format!("{TOML}{extra}")).unwrap();
    config::load(&Source::File(path), &Overrides::default()).unwrap()
}

/// The route check for one configuration (the table's type is the crate's own, so it is
/// captured in a closure rather than named).
fn checker(cfg: Config) -> Check {
    let metrics = scp_auth_proxy::metrics::Metrics::new();
    let routes =
        scp_auth_proxy::target::routes(&cfg, &metrics, &scp_auth_proxy::forward::Egress::direct())
            .expect("routing table");
    Box::new(move |req: Request<()>| {
        let (method, version, uri) = (req.method().clone(), req.version(), req.uri().clone());
        let split = routes.split(uri.path(), uri.query());
        let absolute =
            version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some());
        match routes.route(req) {
            Err(ProxyError::Connect) => assert_eq!(method, Method::CONNECT),
            Err(ProxyError::AbsoluteForm) => assert!(absolute && method != Method::CONNECT),
            Err(ProxyError::AsteriskForm { .. }) => assert_eq!(uri.path(), "*"),
            Err(ProxyError::NoRoute { .. }) => assert!(split.is_none(), "{uri}"),
            Err(ProxyError::InvalidPath { .. }) => assert!(split.is_some()),
            Err(e) => panic!("unexpected routing error for {method} {uri}: {e}"),
            Ok(routed) => {
                assert!(
                    method != Method::CONNECT && !absolute && uri.path() != "*",
                    "{method} {uri}"
                );
                let name = routed.target().name().to_owned();
                let svc = cfg.service(&name).expect("routed to a configured service");
                let out = routed.request();
                assert_eq!(out.method(), method);
                assert_eq!(out.version(), Version::HTTP_11);
                assert_eq!(out.uri().scheme(), Some(&svc.upstream.scheme));
                assert_eq!(out.uri().authority(), Some(&svc.upstream.authority));
                let split = split.expect("routed, so split found a target");
                assert_eq!(cfg.services[split.target].name, name);
                let sent = out
                    .uri()
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/");
                let rest = uri.path().strip_prefix('/').unwrap_or(uri.path());
                let first = rest.split('/').next().unwrap_or("");
                if first == name {
                    let tail = &rest[first.len()..];
                    let want_path = if tail.is_empty() { "/" } else { tail };
                    assert_eq!(out.uri().path(), want_path, "{uri}");
                    assert_eq!(out.uri().query(), uri.query(), "{uri}");
                } else {
                    assert_eq!(cfg.routing.default_service.as_deref(), Some(name.as_str()));
                    let want = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
                    assert_eq!(sent, want, "{uri}");
                }
            }
        }
    })
}

fn checks() -> &'static [Check; 2] {
    static CHECKS: OnceLock<[Check; 2]> = OnceLock::new();
    CHECKS.get_or_init(|| {
        [
            checker(load("")),
            checker(load("[routing]\ndefault_service = \"virtualserver\"\n")),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&v, rest)) = data.split_first() else {
        return;
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let (method, target) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (&b"GET"[..], line),
    };
    let version = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][usize::from(v % 3)];
    for check in checks() {
        let Ok(req) = Request::builder()
            .method(method)
            .uri(target)
            .version(version)
            .body(())
        else {
            return;
        };
        check(req);
    }
});
