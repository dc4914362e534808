//! The real listener in front of a recording upstream that re-checks every signature.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

async fn setup(
    account_id: &str,
    extra: &str,
) -> (
    RecordingUpstream,
    scp_auth_proxy::Running,
    tempfile::TempDir,
) {
    let up = RecordingUpstream::start(SECRET).await;
    let (cfg, dir) = TestConfig::new(&up.base())
        .credentials(&format!("account_id = \"{account_id}\""))
        .service(extra)
        .load();
    let proxy = start_proxy(cfg).await;
    (up, proxy, dir)
}

fn one<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    let all: Vec<_> = h.get_all(name).iter().collect();
    assert_eq!(all.len(), 1, "{name} must arrive exactly once, got {all:?}");
    all[0].to_str().unwrap()
}

#[tokio::test]
async fn get_with_query_is_signed_over_the_exact_target() {
    let (up, proxy, _d) = setup("acct-1", "").await;
    let c = client();
    for target in [
        "/v1/images?limit=10&marker=abc&sort=created_at%3Adesc",
        "/v1/images?name=a%20b&name=c",
        "/v1/images?",
        "/v1/images",
    ] {
        let (status, headers, _) = send(&c, get(proxy.addr, target)).await;
        assert_eq!(status, 200, "{target}");
        assert!(headers.contains_key("x-request-id"));
        let r = up.requests().pop().unwrap();
        assert_eq!(r.target, target);
        assert!(r.signature_ok, "signature mismatch for {target}");
        assert_eq!(one(&r.headers, "scp-accesskey"), ACCESS_KEY);
        assert_eq!(one(&r.headers, "scp-accountid"), "acct-1");
        assert_eq!(one(&r.headers, "scp-clienttype"), "Openapi");
        assert_eq!(one(&r.headers, "scp-api-version"), "virtualserver 1.3");
        assert_eq!(one(&r.headers, "accept-language"), "en-US");
        assert_eq!(one(&r.headers, "host"), up.addr.to_string());
        let ts: u64 = one(&r.headers, "scp-timestamp").parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            now.abs_diff(ts) < 60_000,
            "timestamp {ts} not near now {now}"
        );
        assert_eq!(one(&r.headers, "scp-timestamp").len(), 13);
    }
}

#[tokio::test]
async fn percent_encoded_path_segment_stays_encoded() {
    let (up, proxy, _d) = setup("", "").await;
    let (status, _, _) = send(&client(), get(proxy.addr, "/v1/images/abc%2Fdef")).await;
    assert_eq!(status, 200);
    let r = up.requests().pop().unwrap();
    assert_eq!(r.target, "/v1/images/abc%2Fdef");
    assert!(r.signature_ok);
    // No account id configured: no header, "" in the signature.
    assert!(!r.headers.contains_key("scp-accountid"));
}

#[tokio::test]
async fn post_body_arrives_byte_identical() {
    let (up, proxy, _d) = setup("", "").await;
    let body_bytes = Bytes::from_static(
        b"{ \"url\" :\"https://object-store.kr-west1.e.samsungsdscloud.com/b/k.qcow2\",\n\"x\":1}",
    );
    let req = Request::post(format!("http://{}/v1/images/ab/x", proxy.addr))
        .header("content-type", "application/json")
        .body(body(body_bytes.clone()))
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    let r = up.requests().pop().unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.body, body_bytes);
    assert_eq!(one(&r.headers, "content-type"), "application/json");
    assert!(r.signature_ok);
}

#[tokio::test]
async fn client_auth_headers_are_replaced_and_hop_by_hop_removed() {
    let (up, proxy, _d) = setup("acct", "").await;
    let req = Request::get(format!("http://{}/v1/images", proxy.addr))
        .header("scp-signature", "forged")
        .header("scp-signature", "forged-again")
        .header("scp-accesskey", "attacker")
        .header("scp-timestamp", "1")
        .header("scp-accountid", "other-account")
        .header("scp-clienttype", "Console")
        .header("scp-other", "x")
        .header("authorization", "Bearer x")
        .header("x-auth-token", "t")
        .header("accept-language", "ko-KR")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=1")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("x-keep-me", "1")
        .body(body(Bytes::new()))
        .unwrap();
    let (status, headers, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    // Upstream's hop-by-hop response headers are not passed back.
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
    let r = up.requests().pop().unwrap();
    assert!(r.signature_ok);
    assert_eq!(one(&r.headers, "scp-accesskey"), ACCESS_KEY);
    assert_eq!(one(&r.headers, "scp-accountid"), "acct");
    assert_eq!(one(&r.headers, "scp-clienttype"), "Openapi");
    assert_ne!(one(&r.headers, "scp-timestamp"), "1");
    one(&r.headers, "scp-signature");
    assert_eq!(one(&r.headers, "accept-language"), "ko-KR");
    assert_eq!(one(&r.headers, "x-keep-me"), "1");
    for gone in [
        "scp-other",
        "authorization",
        "x-auth-token",
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(!r.headers.contains_key(gone), "{gone} was forwarded");
    }
}

#[tokio::test]
async fn upstream_errors_pass_back_unchanged() {
    let (up, proxy, _d) = setup("", "").await;
    for code in [404u16, 409, 500] {
        let (status, headers, body) =
            send(&client(), get(proxy.addr, &format!("/v1/status/{code}"))).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(headers["x-upstream"], "yes");
        assert_eq!(body, format!("{{\"errors\":[{{\"status\":{code}}}]}}"));
    }
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn unreachable_upstream_is_502_json() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (cfg, _d) = TestConfig::new(&format!("http://127.0.0.1:{port}")).load();
    let proxy = start_proxy(cfg).await;
    let (status, headers, body) = send(&client(), get(proxy.addr, "/v1/images")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(error_code(&body), "upstream_unreachable");
}

#[tokio::test]
async fn slow_upstream_is_504_json() {
    let (_up, proxy, _d) = setup("", "timeout = \"300ms\"").await;
    let (status, _, body) = send(&client(), get(proxy.addr, "/v1/slow/3000")).await;
    assert_eq!(status, 504);
    assert_eq!(error_code(&body), "upstream_timeout");
    let msg = String::from_utf8_lossy(&body);
    assert!(msg.contains("services.virtualserver.timeout"), "{msg}");
}

#[tokio::test]
async fn large_upload_streams_through() {
    let (up, proxy, _d) = setup("", "").await;
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 64;
    let stream = futures_util::stream::iter((0..CHUNKS).map(|i| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(Bytes::from(
            vec![i as u8; CHUNK],
        )))
    }));
    let b = http_body_util::StreamBody::new(stream).boxed();
    let req = Request::put(format!("http://{}/v1/upload", proxy.addr))
        .body(b)
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("{{\"received\":{}}}", CHUNK * CHUNKS));
    let r = up.requests().pop().unwrap();
    assert_eq!(r.body_len, (CHUNK * CHUNKS) as u64);
    assert!(r.body_complete && r.signature_ok);
}

#[tokio::test]
async fn client_dropping_mid_body_aborts_upstream_request() {
    let (up, proxy, _d) = setup("", "").await;
    let head = "POST /v1/upload HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; 40_000]).await.unwrap();
    // Once the proxy is forwarding the body (the upstream has some of it), vanish.
    assert!(
        eventually(Duration::from_secs(10), || async {
            up.bytes_received() > 0
        })
        .await,
        "the proxy never started forwarding the body"
    );
    drop(s);
    // The upstream sees the body fail; never a complete 100000-byte body.
    eventually(Duration::from_secs(5), || async { up.count() > 0 }).await;
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        1,
        "the upstream handler should have finished reading (with an error)"
    );
    assert!(!seen[0].body_complete, "upstream saw a complete body");
    assert!(seen[0].body_len < 100_000);
}

#[tokio::test]
async fn absolute_form_connect_and_unknown_paths_are_refused() {
    let up = RecordingUpstream::start(SECRET).await;
    // No default service: an unknown path has nowhere to go.
    let (cfg, _d) = TestConfig::new(&up.base())
        .remove("routing", "default_service")
        .load();
    let proxy = start_proxy(cfg).await;
    let out = raw(proxy.addr, b"GET http://evil.example/v1/images HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("absolute_form_target"), "{out}");
    let out = raw(
        proxy.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    let (status, _, body) = send(&client(), get(proxy.addr, "/v1/images")).await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "no_route");
    assert_eq!(up.count(), 0, "nothing may reach the upstream");
    // With the prefix it is routed, and the prefix is stripped.
    let (status, _, _) = send(&client(), get(proxy.addr, "/virtualserver/v1/images?x=%2F")).await;
    assert_eq!(status, 200);
    let r = up.requests().pop().unwrap();
    assert_eq!(r.target, "/v1/images?x=%2F");
    assert!(r.signature_ok);
}

#[tokio::test]
async fn service_prefix_routes_to_its_own_upstream() {
    let vs = RecordingUpstream::start(SECRET).await;
    let iam = RecordingUpstream::start(SECRET).await;
    let (cfg, _d) = TestConfig::new(&vs.base())
        .add_service("iam", &iam.base(), "1.0")
        .load();
    let proxy = start_proxy(cfg).await;
    let (status, _, _) = send(&client(), get(proxy.addr, "/iam/v1/endpoints?a=1")).await;
    assert_eq!(status, 200);
    let r = iam.requests().pop().unwrap();
    assert_eq!(r.target, "/v1/endpoints?a=1");
    assert_eq!(one(&r.headers, "scp-api-version"), "iam 1.0");
    assert!(r.signature_ok);
    assert_eq!(vs.count(), 0);
}

#[tokio::test]
async fn different_api_version_is_refused_before_upstream() {
    let (up, proxy, _d) = setup("", "").await;
    let req = Request::get(format!("http://{}/v1/images", proxy.addr))
        .header("scp-api-version", "virtualserver 1.2")
        .body(body(Bytes::new()))
        .unwrap();
    let (status, _, b) = send(&client(), req).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&b), "api_version_mismatch");
    assert_eq!(up.count(), 0);
    let req = Request::get(format!("http://{}/v1/images", proxy.addr))
        .header("scp-api-version", " virtualserver 1.3 ")
        .body(body(Bytes::new()))
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(
        one(&up.requests()[0].headers, "scp-api-version"),
        "virtualserver 1.3"
    );
}

#[tokio::test]
async fn h2c_and_http10_clients_reach_an_http11_upstream() {
    let (up, proxy, _d) = setup("", "").await;
    let h2: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let (status, _, _) = send(&h2, get(proxy.addr, "/v1/images?via=h2c")).await;
    assert_eq!(status, 200);
    let r = up.requests().pop().unwrap();
    assert_eq!(r.target, "/v1/images?via=h2c");
    assert!(r.signature_ok);
    let out = raw(
        proxy.addr,
        b"GET /v1/images?via=http10 HTTP/1.0\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(up.requests().pop().unwrap().signature_ok);
}

#[tokio::test]
async fn client_gone_mid_request_leaves_no_request_in_flight() {
    let (up, proxy, _d) = setup("", "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /v1/slow/3000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let in_flight = |n: u32| {
        let metrics = &proxy.metrics;
        move || async move {
            metrics
                .encode()
                .contains(&format!("scp_auth_proxy_in_flight_requests {n}"))
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async { up.count() == 1 }).await,
        "the request never reached the upstream"
    );
    assert!(in_flight(1)().await, "{}", proxy.metrics.encode());
    drop(s);
    let gauge_back = eventually(Duration::from_secs(5), in_flight(0)).await;
    assert!(gauge_back, "{}", proxy.metrics.encode());
}

/// `clients` slow GETs at once, five rounds: the upstream connections the first round used,
/// and those all five had used.
async fn concurrent_rounds(service: &str, clients: usize) -> (u64, u64) {
    let (up, proxy, _d) = setup("", service).await;
    let client = client();
    let round = || async {
        let sends = (0..clients).map(|_| send(&client, get(proxy.addr, "/v1/slow/50")));
        for (status, _, _) in futures_util::future::join_all(sends).await {
            assert_eq!(status, 200);
        }
    };
    round().await;
    let after_first = up.connections();
    for _ in 0..4 {
        round().await;
    }
    (after_first, up.connections())
}

/// More client connections than `max_idle_connections`: each client connection keeps the
/// upstream connection its first request opened, so rounds after the first open none. Before
/// upstream connections were bound to client connections, each round closed and reopened all
/// but the 4 idle ones (16 + 4 x 12 = 64 connections in five rounds).
#[tokio::test]
async fn client_connections_above_max_idle_keep_their_own_upstream_connections() {
    let (after_first, after_all) = concurrent_rounds("max_idle_connections = 4", 16).await;
    assert!(
        (8..=16).contains(&after_first),
        "16 concurrent requests used {after_first} upstream connections"
    );
    assert_eq!(
        after_all, after_first,
        "rounds after the first opened new upstream connections"
    );
}

/// A client connection quiet between requests for over a second hands its upstream
/// connection back to the pool: a second client connection reuses it instead of opening
/// another, and the first, busy again, takes it from the pool.
#[tokio::test]
async fn a_quiet_client_connection_gives_its_upstream_connection_back_to_the_pool() {
    let (up, proxy, _d) = setup("", "").await;
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        tx
    };
    let get = |tx: &mut hyper::client::conn::http1::SendRequest<Body>| {
        let req = Request::get("/v1/images")
            .header(http::header::HOST, proxy.addr.to_string())
            .body(body(Bytes::new()))
            .unwrap();
        let sent = tx.send_request(req);
        async move {
            let resp = sent.await.unwrap();
            let status = resp.status();
            resp.into_body().collect().await.unwrap();
            status
        }
    };
    let mut first = connect().await;
    assert_eq!(get(&mut first).await, 200);
    assert_eq!(get(&mut first).await, 200);
    assert_eq!(up.connections(), 1);
    // Longer than the proxy's one second: a timer, nothing to poll for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut second = connect().await;
    assert_eq!(get(&mut second).await, 200);
    assert_eq!(get(&mut first).await, 200);
    assert_eq!(up.connections(), 1, "a new upstream connection was opened");
}

/// 64 clients at once, round after round, as the peer bench's load: the upstream pool keeps
/// every connection (the default `max_idle_connections` is above 64), so no round opens new
/// ones. With 32 idle slots each round closed and reopened half of them (192 connections in
/// five rounds instead of 64).
#[tokio::test]
async fn sixty_four_concurrent_clients_reuse_upstream_connections() {
    let (after_first, after_all) = concurrent_rounds("", 64).await;
    assert!(
        after_first >= 32,
        "64 concurrent requests used {after_first} connections"
    );
    assert_eq!(
        after_all, after_first,
        "rounds after the first opened new upstream connections"
    );
}
