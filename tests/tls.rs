//! Forwarding over TLS: a local HTTPS upstream with a test CA, trusted through `ca_file`.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

#[derive(Clone, Debug)]
struct Seen {
    version: http::Version,
    target: String,
    headers: http::HeaderMap,
}

/// An HTTPS upstream on 127.0.0.1:0 offering h2 and http/1.1 by ALPN.
async fn tls_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let acceptor = tls_acceptor(
        &format!("{FIXTURES}/server.pem"),
        &format!("{FIXTURES}/server.key"),
        &[b"h2", b"http/1.1"],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(Seen {
                            version: req.version(),
                            target: req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: req.headers().clone(),
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"tls\":true}",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn forwards_over_tls_with_extra_ca_and_h2_by_alpn() {
    let (up, seen) = tls_upstream().await;
    let upstream = format!("https://localhost:{}", up.port());
    let extra = format!("ca_file = \"{FIXTURES}/ca.pem\"");
    let (cfg, _d) = TestConfig::new(&upstream).service(&extra).load();
    let proxy = start_proxy(cfg).await;
    let (status, _, body) = send(&client(), get(proxy.addr, "/v1/images?name=a%20b")).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body, "{\"tls\":true}");
    let s = seen.lock().unwrap().pop().unwrap();
    assert_eq!(s.version, http::Version::HTTP_2, "ALPN should pick h2");
    assert_eq!(s.target, "/v1/images?name=a%20b");
    let h = |n: &str| s.headers[n].to_str().unwrap().to_owned();
    let expected = scp_auth_proxy::signer::sign(
        SECRET.as_bytes(),
        "GET",
        &format!("{upstream}/v1/images?name=a%20b"),
        &h("scp-timestamp"),
        ACCESS_KEY,
        "",
        "Openapi",
    );
    assert_eq!(h("scp-signature"), expected);
}

#[tokio::test]
async fn untrusted_certificate_is_502() {
    let (up, seen) = tls_upstream().await;
    let (cfg, _d) = TestConfig::new(&format!("https://localhost:{}", up.port())).load();
    let proxy = start_proxy(cfg).await;
    let (status, _, body) = send(&client(), get(proxy.addr, "/v1/images")).await;
    assert_eq!(status, 502);
    assert_eq!(error_code(&body), "upstream_unreachable");
    assert!(
        String::from_utf8_lossy(&body)
            .to_lowercase()
            .contains("certificate"),
        "{body:?}"
    );
    assert!(seen.lock().unwrap().is_empty());
}
