//! Egress through a corporate proxy: upstreams reached through an HTTP CONNECT tunnel
//! (`HTTPS_PROXY` / `HTTP_PROXY`), `NO_PROXY` and loopback bypasses, and proxy failures as 502.
//!
//! Test upstreams listen on 127.0.0.1, and loopback upstreams never use the proxy, so the tunnelled
//! ones are configured under the name `scp-upstream.test`: the CONNECT proxy below resolves that
//! name to 127.0.0.1 itself (with CONNECT the proxy resolves the target, not the client), so no
//! DNS is involved and all traffic stays on 127.0.0.1.
//!
//! Serving may also read each non-loopback service's live version list in the background
//! (unsigned `GET /`, through the same egress): assertions about the proxied traffic therefore
//! look at the `/v1/...` requests the tests send and allow for that one extra connection.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use common::*;
use scp_auth_proxy::config::Config;
use scp_auth_proxy::forward::{client_for, DirectReason, Egress, EgressRoute};

const NAME: &str = "scp-upstream.test";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A local CONNECT proxy

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer 200 and relay both ways.
    Tunnel,
    /// Answer this status and close.
    Refuse(u16),
}

/// One CONNECT request as the proxy received it.
#[derive(Clone, Debug)]
struct ConnectSeen {
    target: String,
    proxy_authorization: Option<String>,
}

#[derive(Default)]
struct ProxyLog {
    connects: Vec<ConnectSeen>,
    /// Tunnels established (200 sent, relaying started).
    tunnels: usize,
    /// The first bytes the client sent inside each tunnel (one read, up to 4 KiB).
    first_chunks: Vec<Vec<u8>>,
}

struct ConnectProxy {
    addr: SocketAddr,
    log: Arc<Mutex<ProxyLog>>,
    task: JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(handle_connect(stream, mode, task_log.clone()));
            }
        });
        Self { addr, log, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connects(&self) -> Vec<ConnectSeen> {
        self.log.lock().unwrap().connects.clone()
    }

    fn tunnels(&self) -> usize {
        self.log.lock().unwrap().tunnels
    }

    fn first_chunks(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().first_chunks.clone()
    }
}

async fn handle_connect(mut client: TcpStream, mode: Mode, log: Arc<Mutex<ProxyLog>>) {
    // The request head, byte by byte so nothing after it is swallowed; bounded in size and time.
    let mut head = Vec::new();
    let read_head = async {
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            if client.read(&mut b).await.ok()? == 0 {
                return None;
            }
            head.push(b[0]);
        }
        Some(())
    };
    if tokio::time::timeout(WAIT, read_head)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        return;
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (Some("CONNECT"), Some(target)) = (request.next(), request.next()) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let proxy_authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    log.lock().unwrap().connects.push(ConnectSeen {
        target: target.to_owned(),
        proxy_authorization,
    });
    if let Mode::Refuse(code) = mode {
        let answer = format!("HTTP/1.1 {code} Refused by test proxy\r\ncontent-length: 0\r\n\r\n");
        let _ = client.write_all(answer.as_bytes()).await;
        return;
    }
    // The proxy resolves the target: the test name is this machine.
    let Some((host, port)) = target.rsplit_once(':') else {
        return;
    };
    let host = if host == NAME { "127.0.0.1" } else { host };
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(WAIT, TcpStream::connect(format!("{host}:{port}"))).await
    else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    log.lock().unwrap().tunnels += 1;
    // Note what the client sends first inside the tunnel, then relay it and the rest.
    let mut first = vec![0u8; 4096];
    match tokio::time::timeout(WAIT, client.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {
            first.truncate(n);
            log.lock().unwrap().first_chunks.push(first.clone());
            if upstream.write_all(&first).await.is_err() {
                return;
            }
        }
        _ => return,
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A config whose default service points at `upstream`, with `extra` lines for the service.
fn config(upstream: &str, extra: &str) -> Config {
    let (cfg, _dir) = TestConfig::new(upstream)
        .credentials("account_id = \"acct-1\"")
        .service(extra)
        .load();
    cfg
}

async fn start(cfg: Config, egress: Egress) -> scp_auth_proxy::Running {
    let creds = credentials(&cfg);
    scp_auth_proxy::start_with_egress(cfg, creds, egress)
        .await
        .unwrap()
}

async fn stop(running: scp_auth_proxy::Running) {
    running.shutdown();
    let _ = tokio::time::timeout(WAIT, running.wait()).await;
}

async fn get_with_timeout(
    client: &Client,
    addr: SocketAddr,
    target: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    tokio::time::timeout(WAIT, send(client, get(addr, target)))
        .await
        .expect("the proxy answers in time")
}

fn message(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["message"].as_str().unwrap_or_default().to_owned()
}

fn upstream(s: &str) -> scp_auth_proxy::config::Upstream {
    scp_auth_proxy::config::Upstream::parse(s).unwrap()
}

/// What the upstream received under `/v1/` (the requests the tests send).
fn v1(up: &RecordingUpstream) -> Vec<Recorded> {
    up.requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/v1/"))
        .collect()
}

/// How many tunnels began with a request line starting `prefix` (plaintext upstreams).
fn tunnels_starting(proxy: &ConnectProxy, prefix: &str) -> usize {
    proxy
        .first_chunks()
        .iter()
        .filter(|c| c.starts_with(prefix.as_bytes()))
        .count()
}

/// Every CONNECT the proxy received named `target`; there was at least one.
fn all_connects_to(proxy: &ConnectProxy, target: &str) -> Vec<ConnectSeen> {
    let connects = proxy.connects();
    assert!(!connects.is_empty(), "no CONNECT reached the proxy");
    for c in &connects {
        assert_eq!(c.target, target, "{connects:?}");
    }
    connects
}

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/egress/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

// ---------------------------------------------------------------------------------------------
// Through the tunnel

#[tokio::test]
async fn http_upstream_goes_through_the_connect_tunnel_with_signature_intact() {
    let up = RecordingUpstream::start(SECRET).await;
    let proxy = ConnectProxy::start(Mode::Tunnel).await;
    let base = format!("http://{NAME}:{}", up.addr.port());
    let running = start(
        config(&base, ""),
        Egress::direct().with_http_proxy(proxy.url()),
    )
    .await;
    let client = client();

    let (status, _, body) = get_with_timeout(&client, running.addr, "/v1/servers?size=2").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    // A second request reuses the pooled connection: still one tunnel.
    let (status, _, _) = get_with_timeout(&client, running.addr, "/v1/servers/abc").await;
    assert_eq!(status, StatusCode::OK);

    let connects = all_connects_to(&proxy, &format!("{NAME}:{}", up.addr.port()));
    assert!(connects.iter().all(|c| c.proxy_authorization.is_none()));
    // Exactly one tunnel carried both requests, in origin form as if connected directly.
    assert_eq!(
        tunnels_starting(&proxy, "GET /v1/servers?size=2 HTTP/1.1\r\n"),
        1,
        "{:?}",
        proxy.first_chunks()
    );
    assert_eq!(tunnels_starting(&proxy, "GET /v1/servers/abc "), 0);
    assert_eq!(tunnels_starting(&proxy, "GET /v1/"), 1);

    let seen = v1(&up);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/v1/servers?size=2");
    assert_eq!(seen[1].target, "/v1/servers/abc");
    for r in &seen {
        // Origin form with the upstream's own Host: the tunnel is transparent.
        assert_eq!(r.headers["host"], format!("{NAME}:{}", up.addr.port()));
        assert!(r.signature_ok, "signature recomputed upstream must match");
        assert!(r.headers.get("proxy-authorization").is_none());
    }
    stop(running).await;
}

/// A TLS upstream for `scp-upstream.test` (certificate from tests/fixtures/egress) that records
/// the SNI it was asked for and each request, and checks the signature over `https://`.
struct TlsUpstream {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start() -> Self {
        let acceptor = tls_acceptor(
            &fixture("upstream.pem"),
            &fixture("upstream.key"),
            &[b"http/1.1"],
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sni = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (task_sni, task_seen) = (sni.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, sni, seen) = (acceptor.clone(), task_sni.clone(), task_seen.clone());
                conns.spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(WAIT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let name = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                    sni.lock().unwrap().push(name);
                    let svc = hyper::service::service_fn(move |req: Request<_>| {
                        let seen = seen.clone();
                        async move {
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_owned())
                                .unwrap_or_default();
                            let ok = signature_valid(
                                SECRET.as_bytes(),
                                "https",
                                req.method().as_str(),
                                &target,
                                req.headers(),
                            );
                            seen.lock().unwrap().push((target, ok));
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"{\"tls\":true}"),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            sni,
            seen,
            task,
        }
    }
}

#[tokio::test]
async fn https_upstream_gets_tls_end_to_end_inside_the_tunnel() {
    let up = TlsUpstream::start().await;
    let proxy = ConnectProxy::start(Mode::Tunnel).await;
    let base = format!("https://{NAME}:{}", up.addr.port());
    let extra = format!("ca_file = \"{}\"", fixture("ca.pem"));
    let running = start(
        config(&base, &extra),
        // HTTP_PROXY is for http upstreams; a wrong one here must not be used.
        Egress::direct()
            .with_https_proxy(proxy.url())
            .with_http_proxy("http://127.0.0.1:9"),
    )
    .await;
    let client = client();

    let (status, _, body) = get_with_timeout(&client, running.addr, "/v1/images?x=1").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(&body[..], b"{\"tls\":true}");

    all_connects_to(&proxy, &format!("{NAME}:{}", up.addr.port()));
    assert!(proxy.tunnels() >= 1);
    // The proxy relayed TLS handshakes (record type 22), never plaintext HTTP.
    for chunk in proxy.first_chunks() {
        assert_eq!(chunk[0], 0x16);
        let relayed = String::from_utf8_lossy(&chunk).to_ascii_lowercase();
        assert!(!relayed.contains("scp-signature") && !relayed.contains("/v1/images"));
    }
    // TLS was made with the upstream's own name, verified against services.*.ca_file.
    let sni = up.sni.lock().unwrap().clone();
    assert!(!sni.is_empty() && sni.iter().all(|n| n == NAME), "{sni:?}");
    let seen: Vec<_> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t.starts_with("/v1/"))
        .cloned()
        .collect();
    assert_eq!(seen, vec![("/v1/images?x=1".to_owned(), true)]);
    stop(running).await;
}

#[tokio::test]
async fn proxy_credentials_go_in_proxy_authorization_and_nowhere_else() {
    let up = RecordingUpstream::start(SECRET).await;
    let proxy = ConnectProxy::start(Mode::Tunnel).await;
    let base = format!("http://{NAME}:{}", up.addr.port());
    let proxy_url = format!("http://alice:s3cr%40t@{}", proxy.addr);
    let egress = Egress::direct().with_http_proxy(&proxy_url);
    assert!(!format!("{egress:?}").contains("s3cr"), "{egress:?}");
    let route = egress.route(&upstream(&base)).unwrap();
    assert_eq!(
        route,
        EgressRoute::Proxy {
            proxy: proxy.url(),
            var: "HTTP_PROXY",
            auth: true
        }
    );
    let running = start(config(&base, ""), egress).await;

    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:s3cr@t")
    );
    for c in all_connects_to(&proxy, &format!("{NAME}:{}", up.addr.port())) {
        assert_eq!(c.proxy_authorization.as_deref(), Some(expected.as_str()));
    }
    let seen = v1(&up);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("proxy-authorization").is_none());
    assert!(seen[0].signature_ok);
    stop(running).await;
}

// ---------------------------------------------------------------------------------------------
// Bypasses

#[tokio::test]
async fn loopback_upstream_never_uses_the_proxy() {
    let up = RecordingUpstream::start(SECRET).await;
    let proxy = ConnectProxy::start(Mode::Tunnel).await;
    let egress = Egress::direct()
        .with_http_proxy(proxy.url())
        .with_https_proxy(proxy.url());
    for base in [
        up.base(),
        "http://localhost:1".to_owned(),
        "https://[::1]:8443".to_owned(),
        "https://127.0.0.2".to_owned(),
    ] {
        assert_eq!(
            egress.route(&upstream(&base)).unwrap(),
            EgressRoute::Direct(DirectReason::Loopback),
            "{base}"
        );
    }
    let running = start(config(&up.base(), ""), egress).await;

    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(up.count(), 1);
    assert!(up.requests()[0].signature_ok);
    assert!(proxy.connects().is_empty());
    assert_eq!(proxy.tunnels(), 0);
    stop(running).await;
}

#[test]
fn no_proxy_follows_curl_rules() {
    let proxied = |no_proxy: &str, base: &str| {
        let egress = Egress::direct()
            .with_https_proxy("http://proxy.corp.example:3128")
            .with_http_proxy("http://proxy.corp.example:3128")
            .with_no_proxy(no_proxy);
        match egress.route(&upstream(base)).unwrap() {
            EgressRoute::Proxy { proxy, .. } => {
                assert_eq!(proxy, "http://proxy.corp.example:3128");
                true
            }
            EgressRoute::Direct(reason) => {
                assert_eq!(reason, DirectReason::NoProxyMatch, "{no_proxy} {base}");
                false
            }
        }
    };
    let scp = "https://virtualserver.kr-west1.e.samsungsdscloud.com";
    assert!(proxied("", scp));
    assert!(!proxied("samsungsdscloud.com", scp));
    assert!(!proxied(".samsungsdscloud.com", scp));
    assert!(!proxied("other.example, .e.samsungsdscloud.com", scp));
    assert!(!proxied(
        "VirtualServer.kr-west1.e.samsungsdscloud.com",
        scp
    ));
    assert!(!proxied("*", scp));
    // A suffix that is not a whole label does not match.
    assert!(proxied("sdscloud.com", scp));
    assert!(proxied("upstream.test", &format!("http://{NAME}:8080")));
    assert!(!proxied(NAME, &format!("http://{NAME}:8080")));
    // IPs and CIDR ranges.
    assert!(!proxied("10.0.0.0/8", "https://10.1.2.3"));
    assert!(!proxied("10.1.2.3", "https://10.1.2.3:8443"));
    assert!(proxied("10.1.2.4", "https://10.1.2.3"));
    assert!(!proxied("fd00::/8", "https://[fd00::1]:443"));
}

#[tokio::test]
async fn no_proxy_match_connects_directly() {
    // 0.0.0.0 is not loopback by the rule (so the proxy would apply), yet on Linux connecting to
    // it reaches this machine: a direct connection that needs no DNS and stays local.
    let up = RecordingUpstream::start(SECRET).await;
    let proxy = ConnectProxy::start(Mode::Tunnel).await;
    let base = format!("http://0.0.0.0:{}", up.addr.port());
    let bypass = Egress::direct()
        .with_http_proxy(proxy.url())
        .with_no_proxy("example.com, 0.0.0.0");
    assert_eq!(
        bypass.route(&upstream(&base)).unwrap(),
        EgressRoute::Direct(DirectReason::NoProxyMatch)
    );
    let running = start(config(&base, ""), bypass).await;
    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(v1(&up).len(), 1);
    assert!(v1(&up)[0].signature_ok);
    assert!(proxy.connects().is_empty(), "{:?}", proxy.connects());
    stop(running).await;

    // The same upstream without the NO_PROXY entry goes through the proxy.
    let running = start(
        config(&base, ""),
        Egress::direct()
            .with_http_proxy(proxy.url())
            .with_no_proxy("example.com"),
    )
    .await;
    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(v1(&up).len(), 2);
    all_connects_to(&proxy, &format!("0.0.0.0:{}", up.addr.port()));
    assert_eq!(tunnels_starting(&proxy, "GET /v1/servers HTTP/1.1\r\n"), 1);
    stop(running).await;
}

#[test]
fn each_scheme_uses_its_own_variable() {
    let https_only = Egress::direct().with_https_proxy("http://proxy.corp.example:3128");
    assert_eq!(
        https_only
            .route(&upstream("http://emulator.corp.example:8080"))
            .unwrap(),
        EgressRoute::Direct(DirectReason::NoProxySet)
    );
    assert_eq!(
        https_only
            .route(&upstream("https://iam.e.samsungsdscloud.com"))
            .unwrap(),
        EgressRoute::Proxy {
            proxy: "http://proxy.corp.example:3128".into(),
            var: "HTTPS_PROXY",
            auth: false
        }
    );
    // No port in the proxy URL: 80; no scheme: http.
    let bare = Egress::direct().with_http_proxy("proxy.corp.example");
    assert_eq!(
        bare.route(&upstream("http://emulator.corp.example"))
            .unwrap(),
        EgressRoute::Proxy {
            proxy: "http://proxy.corp.example:80".into(),
            var: "HTTP_PROXY",
            auth: false
        }
    );
    let with_port = Egress::direct().with_https_proxy("proxy.corp.example:3128");
    assert_eq!(
        with_port
            .route(&upstream("https://iam.e.samsungsdscloud.com"))
            .unwrap(),
        EgressRoute::Proxy {
            proxy: "http://proxy.corp.example:3128".into(),
            var: "HTTPS_PROXY",
            auth: false
        }
    );
    assert!(Egress::direct().is_direct());
    assert!(!bare.is_direct());
}

#[test]
fn from_lookup_prefers_upper_case_and_skips_empty_values() {
    let vars: HashMap<&str, &str> = [
        ("HTTPS_PROXY", "http://upper.example:3128"),
        ("https_proxy", "http://lower.example:3128"),
        ("HTTP_PROXY", "  "),
        ("http_proxy", "http://lower-http.example:8080"),
        ("no_proxy", ".internal.example"),
        ("ALL_PROXY", "http://all.example:1"),
    ]
    .into_iter()
    .collect();
    let egress = Egress::from_lookup(|n| vars.get(n).map(|v| (*v).to_owned()));
    let expected = Egress::direct()
        .with_https_proxy("http://upper.example:3128")
        .with_http_proxy("http://lower-http.example:8080")
        .with_no_proxy(".internal.example");
    assert_eq!(egress, expected);
    // ALL_PROXY alone is not used.
    let all_only =
        Egress::from_lookup(|n| (n == "ALL_PROXY").then(|| "http://all.example:1".into()));
    assert!(all_only.is_direct());
}

// ---------------------------------------------------------------------------------------------
// Failures

#[tokio::test]
async fn proxy_refusing_connect_is_502_upstream_unreachable_naming_the_proxy() {
    let up = RecordingUpstream::start(SECRET).await;
    let proxy = ConnectProxy::start(Mode::Refuse(403)).await;
    let base = format!("http://{NAME}:{}", up.addr.port());
    let running = start(
        config(&base, ""),
        Egress::direct().with_http_proxy(format!("http://bob:hunter2@{}", proxy.addr)),
    )
    .await;

    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(error_code(&body), "upstream_unreachable");
    let msg = message(&body);
    assert!(msg.contains(&proxy.url()), "{msg}");
    assert!(
        msg.contains(&format!("CONNECT {NAME}:{}", up.addr.port())),
        "{msg}"
    );
    assert!(msg.contains(&base), "{msg}");
    assert!(!msg.contains("hunter2") && !msg.contains("bob"), "{msg}");
    all_connects_to(&proxy, &format!("{NAME}:{}", up.addr.port()));
    assert_eq!(proxy.tunnels(), 0);
    assert_eq!(up.count(), 0);
    stop(running).await;
}

#[tokio::test]
async fn proxy_asking_for_credentials_is_502_upstream_unreachable() {
    let proxy = ConnectProxy::start(Mode::Refuse(407)).await;
    let base = format!("https://{NAME}:8443");
    let running = start(
        config(&base, ""),
        Egress::direct().with_https_proxy(proxy.url()),
    )
    .await;
    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(error_code(&body), "upstream_unreachable");
    let msg = message(&body);
    assert!(msg.contains(&proxy.url()), "{msg}");
    assert!(msg.contains("authorization"), "{msg}");
    stop(running).await;
}

#[tokio::test]
async fn unreachable_proxy_is_502_upstream_unreachable_naming_the_proxy() {
    // A port that was just free: nothing listens there.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let base = format!("https://{NAME}:8443");
    let running = start(
        config(&base, ""),
        Egress::direct().with_https_proxy(format!("http://{closed}")),
    )
    .await;
    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(error_code(&body), "upstream_unreachable");
    let msg = message(&body);
    assert!(msg.contains(&format!("http://{closed}")), "{msg}");
    assert!(msg.contains("egress proxy"), "{msg}");
    stop(running).await;
}

#[tokio::test]
async fn silent_proxy_is_bounded_by_the_service_timeout() {
    // Accepts the connection, reads the CONNECT, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let base = format!("https://{NAME}:8443");
    let running = start(
        config(&base, "timeout = \"300ms\""),
        Egress::direct().with_https_proxy(format!("http://{addr}")),
    )
    .await;
    let (status, _, body) = get_with_timeout(&client(), running.addr, "/v1/servers").await;
    assert!(
        status == StatusCode::GATEWAY_TIMEOUT || status == StatusCode::BAD_GATEWAY,
        "{status} {body:?}"
    );
    if status == StatusCode::BAD_GATEWAY {
        let msg = message(&body);
        assert!(
            msg.contains(&format!("egress proxy http://{addr}")),
            "{msg}"
        );
    }
    stop(running).await;
    silent.abort();
}

// ---------------------------------------------------------------------------------------------
// At the connector level

#[tokio::test]
async fn connect_target_gets_the_scheme_default_port() {
    let proxy = ConnectProxy::start(Mode::Refuse(403)).await;
    let egress = Egress::direct()
        .with_http_proxy(proxy.url())
        .with_https_proxy(proxy.url());
    for (base, target) in [
        (format!("http://{NAME}"), format!("{NAME}:80")),
        (format!("https://{NAME}"), format!("{NAME}:443")),
        (format!("https://{NAME}:8443"), format!("{NAME}:8443")),
    ] {
        let cfg = config(&base, "");
        let svc = cfg.service("virtualserver").unwrap();
        let http = client_for(svc, &egress).unwrap();
        let req = Request::get(format!("{base}/v1/servers"))
            .body(scp_auth_proxy::body::NoTrailers::new(
                scp_auth_proxy::body::empty(),
            ))
            .unwrap();
        let err = tokio::time::timeout(WAIT, http.request(req))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert_eq!(proxy.connects().last().unwrap().target, target);
    }
}

#[tokio::test]
async fn client_for_tunnels_a_plain_request() {
    let up = RecordingUpstream::start(SECRET).await;
    let proxy = ConnectProxy::start(Mode::Tunnel).await;
    let base = format!("http://{NAME}:{}", up.addr.port());
    let cfg = config(&base, "");
    let svc = cfg.service("virtualserver").unwrap();
    let http = client_for(svc, &Egress::direct().with_http_proxy(proxy.url())).unwrap();
    let req = Request::post(format!("{base}/v1/echo"))
        .body(scp_auth_proxy::body::NoTrailers::new(
            http_body_util::Either::Right(Full::new(Bytes::from_static(b"hello"))),
        ))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, http.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"received\":5}");
    assert_eq!(proxy.tunnels(), 1);
    assert_eq!(up.requests()[0].body, Bytes::from_static(b"hello"));
}

#[test]
fn unusable_proxy_settings_fail_at_start_without_leaking_credentials() {
    let cfg = config(&format!("https://{NAME}"), "");
    let svc = cfg.service("virtualserver").unwrap();
    for (value, says) in [
        ("socks5://u:pw-1@127.0.0.1:1080", "only http://"),
        ("https://u:pw-1@proxy.corp.example:443", "only http://"),
        ("http://u:pw-1@", "not a usable proxy URL"),
        ("http://u:pw-1@bad host:80", "not a usable proxy URL"),
    ] {
        let err = client_for(svc, &Egress::direct().with_https_proxy(value))
            .err()
            .unwrap_or_else(|| panic!("{value} accepted"))
            .to_string();
        assert!(err.contains(says), "{value}: {err}");
        assert!(err.contains("HTTPS_PROXY"), "{value}: {err}");
        assert!(err.contains("services.virtualserver"), "{value}: {err}");
        assert!(!err.contains("pw-1"), "{value}: {err}");
    }
}
