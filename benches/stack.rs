//! The whole in-process request path, every layer from tracing to signing, over a `service_fn`
//! upstream that answers at once: what one proxied request costs without sockets, hyper or the
//! access-log write (no log subscriber is installed here; the peer bench keeps the log on).
//!
//! Run with `cargo bench --bench stack`; `cargo test` does not run it.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};

use scp_auth_proxy::app::{layers, ProxyParts};
use scp_auth_proxy::body::{self, Body};
use scp_auth_proxy::config::{load, Overrides, Source};
use scp_auth_proxy::credentials::{CredentialStore, Credentials};
use scp_auth_proxy::error::ProxyError;
use scp_auth_proxy::forward::Egress;
use scp_auth_proxy::layers::ReqBody;
use scp_auth_proxy::metrics::Metrics;
use scp_auth_proxy::target::RoutedRequest;

const IMAGE: &str = "/v1/images/70a599e0-31e7-49b7-b260-868f441e862b/import";
const IMPORT_BODY: &str = r#"{"url":"https://object-store.kr-west1.e.samsungsdscloud.com/bench-bucket/bench-image.qcow2"}"#;

/// The peer bench's configuration for target E, with an SCP-like https upstream.
fn parts() -> ProxyParts {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.toml");
    std::fs::write(
        &path,
        r#"
[credentials]
access_key = "bench-ak"
account_id = "bench-account"
[routing]
default_service = "virtualserver"
[services.virtualserver]
upstream = "https://virtualserver.kr-west1.e.samsungsdscloud.com"
api_version = "1.3"
region = "kr-west1"
"#,
    )
    .expect("write config");
    let config = load(&Source::File(path), &Overrides::default()).expect("config loads");
    let creds = Credentials::from_parts(
        "bench-ak",
        b"bench-secret-0123456789",
        "bench-account",
        "Openapi",
        "bench",
    )
    .expect("credentials");
    ProxyParts::new(
        &config,
        CredentialStore::new(creds),
        Metrics::new(),
        &Egress::direct(),
    )
    .expect("parts")
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The upstream reads the body (as hyper would send it) and answers 202 at once.
    let upstream = tower::service_fn(|r: RoutedRequest<ReqBody<Full<Bytes>>>| async move {
        let body = r.into_request().into_body();
        let _ = body.collect().await;
        let mut resp: Response<Body> = Response::new(body::full(r#"{"status":"accepted"}"#));
        *resp.status_mut() = StatusCode::ACCEPTED;
        Ok::<_, ProxyError>(resp)
    });
    let svc = rt.block_on(async { layers::<_, Full<Bytes>>(&parts()).layer(upstream) });
    let call = |req: Request<Full<Bytes>>| {
        let svc = svc.clone();
        rt.block_on(async move {
            let resp: Result<Response<Body>, Infallible> = svc.oneshot(req).await;
            let resp = resp.unwrap_or_else(|e| match e {});
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            resp
        })
    };
    let mut g = c.benchmark_group("stack");
    g.bench_function("GET /v1/images?limit=10", |b| {
        b.iter(|| {
            let req = Request::get("/v1/images?limit=10")
                .header("host", "127.0.0.1:18084")
                .header("user-agent", "wrk")
                .body(Full::new(Bytes::new()))
                .expect("request");
            black_box(call(req))
        })
    });
    g.bench_function("POST image import (body checked)", |b| {
        b.iter(|| {
            let req = Request::post(IMAGE)
                .header("host", "127.0.0.1:18084")
                .header("content-type", "application/json")
                .header("content-length", IMPORT_BODY.len())
                .body(Full::new(Bytes::from_static(IMPORT_BODY.as_bytes())))
                .expect("request");
            black_box(call(req))
        })
    });
    g.bench_function("GET refused by routing (CONNECT)", |b| {
        b.iter(|| {
            let req = Request::connect("example.com:443")
                .body(Full::new(Bytes::new()))
                .expect("request");
            let svc = svc.clone();
            black_box(rt.block_on(async move { svc.oneshot(req).await }))
        })
    });
    g.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
