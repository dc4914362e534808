//! Listener hardening, through the real listener or binary: the connection cap with /healthz
//! answering, hard time limits (idle h1/h2, header, upstream body stall, upload stall, slow
//! upload, upstream timeout), the 408/503 JSON answers, a lossless drain, the Unix socket.
//! Every wait is bounded; each test prints the times it observed.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn toml_with(upstream: &str, server: &str, service: &str) -> String {
    basic_toml(upstream, "", service).replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"127.0.0.1:0\"\n{server}"),
    )
}

async fn proxy(
    upstream: &str,
    server: &str,
    service: &str,
) -> (scp_auth_proxy::Running, tempfile::TempDir) {
    let (cfg, dir) = config_from(&toml_with(upstream, server, service));
    (start_proxy(cfg).await, dir)
}

/// Reads until EOF (or `within`), returning the bytes and when the EOF came.
async fn read_to_eof(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(Instant::now())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

/// Whether the server answers a GET on `s` within `within`.
async fn answers(s: &mut TcpStream, within: Duration) -> bool {
    if s.write_all(b"GET /v1/images HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(within, s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf.starts_with(b"HTTP/1.1 200")
    )
}

fn json_code(body: &[u8]) -> String {
    error_code(&Bytes::copy_from_slice(body))
}

// ------------------------------------------------------------------ connection cap

#[tokio::test]
async fn at_the_connection_cap_accepting_pauses_and_healthz_answers() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "max_connections = 4", "").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        assert!(answers(&mut s, Duration::from_secs(5)).await);
        held.push(s);
    }
    // The fifth connects (the kernel's backlog) but is not served while four are open.
    let mut fifth = TcpStream::connect(p.addr).await.unwrap();
    let waited = Instant::now();
    assert!(
        !answers(&mut fifth, Duration::from_millis(700)).await,
        "served past the cap"
    );
    let (status, _, body) = send(&client(), get(p.admin_addr, "/healthz")).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok\n"[..]));
    // One closes: the waiting connection is accepted and answered (its request was queued).
    drop(held.pop());
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), fifth.read_exact(&mut buf))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    println!(
        "cap 4: 5th connection waited {:?} and was served after one closed; /healthz 200 meanwhile",
        waited.elapsed()
    );
}

/// The issue's failure: at the descriptor limit the data plane and /healthz both timed out.
/// With the limit at 64 the cap is derived from it, connections beyond it wait, and the
/// admin listener keeps its reserve.
#[tokio::test(flavor = "multi_thread")]
async fn default_cap_from_the_fd_limit_keeps_healthz_answering() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let toml = toml_with(&up.base(), "", "").replace(
        "[credentials]",
        &format!("[credentials]\nsecret_key_file = \"{}\"", secret.display()),
    );
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, toml).unwrap();
    let p = Proc::start_limited(&["--config", cfg.to_str().unwrap()], &[], Some(64));
    let mut log = p.log();
    for _ in 0..100 {
        if log.contains("\"serving\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = p.log();
    }
    assert!(
        log.contains("\"max_connections\":24") && log.contains("\"fd_limit\":64"),
        "{log}"
    );
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(TcpStream::connect(p.addr).await.unwrap());
    }
    let started = Instant::now();
    for _ in 0..5 {
        let (status, _, _) = tokio::time::timeout(
            Duration::from_secs(3),
            send(&client(), get(p.admin_addr, "/healthz")),
        )
        .await
        .expect("/healthz timed out at the cap");
        assert_eq!(status, 200);
    }
    println!(
        "fd limit 64: max_connections 24, 60 connections open, 5 x /healthz in {:?}",
        started.elapsed()
    );
    drop(held);
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert!(answers(&mut s, Duration::from_secs(5)).await);
    let log = p.log();
    assert!(
        log.matches("accept failed").count() <= 1,
        "accept errors not rate-limited:\n{log}"
    );
}

// ------------------------------------------------------------------ keep-alive still works

#[tokio::test]
async fn keep_alive_pipelining_and_split_heads_work() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    // Two pipelined requests in one write, then a head split over three writes.
    s.write_all(b"GET /v1/a HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/b HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    for part in [&b"GET /v1/c HT"[..], b"TP/1.1\r\nho", b"st: x\r\n\r\n"] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(part).await.unwrap();
    }
    s.write_all(b"GET /v1/d HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, eof) = read_to_eof(&mut s, Duration::from_secs(5)).await;
    assert!(eof.is_some());
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    let targets: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/v1/a", "/v1/b", "/v1/c", "/v1/d"]);
}

/// Reads until `n` HTTP/1.1 status lines have arrived (or `within`), returning the text.
async fn read_responses(s: &mut TcpStream, n: usize, within: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    while String::from_utf8_lossy(&out).matches("HTTP/1.1 ").count() < n {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => out.extend_from_slice(&buf[..k]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Between bursts the listener holds no HTTP/1 connection state; a connection must still
/// carry on across those boundaries: after a request with a body, with a pipelined head
/// split where a burst ends, and after an idle pause longer than the header timeout.
#[tokio::test]
async fn keep_alive_carries_on_across_bursts() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(
        &up.base(),
        "header_read_timeout = \"1s\"\nidle_timeout = \"5s\"",
        "",
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /v1/p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let text = read_responses(&mut s, 1, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // A complete request and the start of the next in one write, the rest later.
    s.write_all(b"GET /v1/e HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/f HT")
        .await
        .unwrap();
    let text = read_responses(&mut s, 1, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"TP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let text = read_responses(&mut s, 1, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // Idle for longer than header_read_timeout (the header clock starts with a head's first
    // byte, not when the previous response ended).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET /v1/g HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, eof) = read_to_eof(&mut s, Duration::from_secs(5)).await;
    assert!(eof.is_some(), "not closed after Connection: close");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    let seen = up.requests();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/v1/p", "/v1/e", "/v1/f", "/v1/g"]);
    assert_eq!(&seen[0].body[..], b"hello");
}

/// A body the proxy answers without reading (refused by the allowlist) is never parsed as
/// requests: its bytes stay body, and the connection closes after the answer.
#[tokio::test]
async fn an_unread_request_body_is_never_taken_for_a_request() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "", r#"allow = ["GET /v1/**"]"#).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"POST /nope HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n\
          GET /v1/smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_responses(&mut s, 1, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 403 "), "{text}");
    // More of the declared body; may fail if the proxy has already closed.
    let _ = s
        .write_all(b"GET /v1/smuggled2 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let (rest, eof) = read_to_eof(&mut s, Duration::from_secs(5)).await;
    assert!(eof.is_some(), "connection left open after an unread body");
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("HTTP/1.1 "), "answered body bytes: {rest}");
    assert_eq!(up.count(), 0, "{:?}", up.requests());
}

// ------------------------------------------------------------------ hard time limits

#[tokio::test]
async fn idle_http1_connection_closes_at_idle_timeout() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "idle_timeout = \"1s\"", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert!(answers(&mut s, Duration::from_secs(5)).await);
    let mut rest = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut rest)).await;
    let idle_from = Instant::now();
    let (_, eof) = read_to_eof(&mut s, Duration::from_secs(6)).await;
    let took = eof.expect("idle connection never closed") - idle_from;
    println!("h1 idle_timeout 1s: closed after {took:?}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Never used at all: closed at the same limit.
    let mut unused = TcpStream::connect(p.addr).await.unwrap();
    let t = Instant::now();
    let (_, eof) = read_to_eof(&mut unused, Duration::from_secs(6)).await;
    let took = eof.expect("unused connection never closed") - t;
    println!("h1 unused connection, idle_timeout 1s: closed after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// An HTTP/2 peer that never answers PING nor acts on GOAWAY: dropped `CLOSE_LIMIT` (2 s)
/// after the idle timeout's graceful close.
#[tokio::test]
async fn idle_http2_peer_ignoring_goaway_and_ping_is_dropped() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "idle_timeout = \"1s\"", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    // Preface and an empty SETTINGS frame; then only read, never answer.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let t = Instant::now();
    let (frames, eof) = read_to_eof(&mut s, Duration::from_secs(10)).await;
    let took = eof.expect("the h2 connection was never closed") - t;
    println!("h2 idle_timeout 1s, peer ignores GOAWAY/PING: dropped after {took:?}");
    // A GOAWAY frame (type 7) was sent before the drop.
    assert!(
        frames.windows(4).any(|w| w[3] == 7 && w[0] == 0),
        "no GOAWAY seen"
    );
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

#[tokio::test]
async fn slow_request_head_gets_408_json() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "header_read_timeout = \"1s\"", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /v1/images HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let (out, eof) = read_to_eof(&mut s, Duration::from_secs(6)).await;
    let took = eof.expect("slow client never closed") - t;
    let text = String::from_utf8_lossy(&out).into_owned();
    println!("header_read_timeout 1s: 408 after {took:?}");
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(json_code(body.as_bytes()), "header_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(up.count(), 0);
    // The same on a kept-alive connection, with the slow head pipelined behind a request.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /v1/a HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/b HTTP/1.1\r\nhost")
        .await
        .unwrap();
    let t = Instant::now();
    let (out, eof) = read_to_eof(&mut s, Duration::from_secs(6)).await;
    let took = eof.expect("slow pipelined head never closed") - t;
    let text = String::from_utf8_lossy(&out).into_owned();
    println!("header_read_timeout 1s, pipelined slow head: 408 after {took:?}");
    let (first, second) = text.split_once("HTTP/1.1 408 ").expect(&text);
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(
        json_code(second.split_once("\r\n\r\n").unwrap().1.as_bytes()),
        "header_timeout"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(up.count(), 1);
}

/// A raw upstream: answers every request with `content-length: 100`, 10 bytes, then stalls.
async fn stalling_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_upstream_body_resets_the_client_and_is_logged() {
    let up = stalling_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let toml = toml_with(&format!("http://{up}"), "", "body_idle_timeout = \"1s\"").replace(
        "[credentials]",
        &format!("[credentials]\nsecret_key_file = \"{}\"", secret.display()),
    );
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, toml).unwrap();
    let p = Proc::start(&["--config", cfg.to_str().unwrap()], &[]);
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /v1/big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let (out, eof) = read_to_eof(&mut s, Duration::from_secs(10)).await;
    let took = eof.expect("the client connection stayed open") - t;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    println!("body_idle_timeout 1s, upstream stalls after 10 of 100 bytes: client connection closed after {took:?} with {} body bytes", body.len());
    assert!(head.contains("content-length: 100"), "{head}");
    assert_eq!(body, "0123456789", "the body must stop short of its length");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The h2 client sees its stream reset: an error, not a complete body.
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/v1/big", p.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .unwrap();
    assert!(
        collected.is_err(),
        "an h2 body cut short must end in an error"
    );
    let mut logged = false;
    for _ in 0..50 {
        if p.log().contains("the upstream body stalled") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "{}", p.log());
}

/// Sends `head` then `body` one byte every `gap`, returns the status, JSON code (if any) and
/// the time from the last byte sent to the answer.
async fn upload(
    addr: SocketAddr,
    body: &[u8],
    send: usize,
    gap: Duration,
) -> (u16, String, Duration, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    s.write_all(
        format!(
            "POST /v1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for b in &body[..send] {
        tokio::time::sleep(gap).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let last = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answered = Instant::now();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let code = if status == 200 {
        String::new()
    } else {
        json_code(body.as_bytes())
    };
    (status, code, answered - last, answered - started)
}

#[tokio::test]
async fn slow_progressing_upload_is_not_cut_by_the_service_timeout() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(
        &up.base(),
        "",
        "timeout = \"1s\"\nbody_idle_timeout = \"2s\"",
    )
    .await;
    // 6 bytes at 0.4 s each: 2.4 s of upload, longer than the 1 s timeout.
    let (status, _, _, total) = upload(p.addr, b"abcdef", 6, Duration::from_millis(400)).await;
    println!("timeout 1s: 6-byte upload at 0.4 s/byte answered {status} after {total:?}");
    assert_eq!(status, 200);
    assert!(total > Duration::from_secs(2));
    assert_eq!(up.requests()[0].body_len, 6);
}

#[tokio::test]
async fn stalled_upload_gets_408_client_body_timeout() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "", "body_idle_timeout = \"1s\"").await;
    let (status, code, after_last, _) =
        upload(p.addr, b"0123456789", 3, Duration::from_millis(50)).await;
    println!("body_idle_timeout 1s: upload stalled after 3 of 10 bytes, {status} {code} {after_last:?} after the last byte");
    assert_eq!((status, code.as_str()), (408, "client_body_timeout"));
    assert!(
        after_last >= Duration::from_millis(900) && after_last < Duration::from_secs(3),
        "{after_last:?}"
    );
    // The upstream saw an aborted body, never a complete one.
    for _ in 0..50 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up.requests().iter().all(|r| !r.body_complete));
}

#[tokio::test]
async fn upstream_timeout_counts_from_the_end_of_the_body() {
    let up = RecordingUpstream::start(SECRET).await;
    let (p, _d) = proxy(&up.base(), "", "timeout = \"1s\"").await;
    let t = Instant::now();
    let (status, _, body) = send(&client(), get(p.addr, "/v1/slow/3000")).await;
    let took = t.elapsed();
    println!("timeout 1s, upstream answers after 3 s: {status} after {took:?}");
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (504, "upstream_timeout")
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

// ------------------------------------------------------------------ drain

fn binary_config(dir: &tempfile::TempDir, upstream: &str, server: &str) -> String {
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let toml = toml_with(upstream, server, "").replace(
        "[credentials]",
        &format!("[credentials]\nsecret_key_file = \"{}\"", secret.display()),
    );
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, toml).unwrap();
    cfg.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_still_waiting_when_the_grace_ends_get_503_draining() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(&dir, &up.base(), "shutdown_grace = \"1s\"");
    let mut p = Proc::start(&["--config", &cfg], &[]);
    let addr = p.addr;
    let slow = tokio::spawn(async move { send(&client(), get(addr, "/v1/slow/8000")).await });
    for _ in 0..200 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.signal("TERM");
    let t = Instant::now();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    println!("shutdown_grace 1s: in-flight request answered {status} after {took:?}");
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (503, "draining")
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let code = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[derive(Debug, Default)]
struct Counts {
    ok: u64,
    lost: u64,
    unsent_retried: u64,
    closed_by_server: u64,
    refused: u64,
}

/// One client: keep-alive requests in a loop until the listener refuses (or 10 s). A request
/// written without an answer is lost; one hyper hands back unsent is retried.
async fn load_worker(addr: SocketAddr) -> Counts {
    let mut c = Counts::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while Instant::now() < deadline {
        let mut tx = match sender.take() {
            Some(tx) => tx,
            None => {
                let Ok(stream) = TcpStream::connect(addr).await else {
                    c.refused += 1;
                    break;
                };
                let Ok((tx, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    continue;
                };
                tokio::spawn(conn);
                tx
            }
        };
        if tx.ready().await.is_err() {
            continue;
        }
        let req = Request::get("/v1/images")
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        match tx.try_send_request(req).await {
            Ok(resp) => {
                let close = resp
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v == "close");
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(_) if status == 200 => c.ok += 1,
                    other => {
                        eprintln!("lost: status {status}, body {other:?}");
                        c.lost += 1;
                    }
                }
                if close {
                    c.closed_by_server += 1;
                } else {
                    sender = Some(tx);
                }
            }
            Err(mut e) => {
                if e.take_message().is_some() {
                    c.unsent_retried += 1;
                } else {
                    eprintln!("lost at {:?}: {:?}", Instant::now(), e.error());
                    c.lost += 1;
                }
            }
        }
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_through_sigterm_loses_no_request() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(&dir, &up.base(), "shutdown_delay = \"2s\"");
    let mut p = Proc::start(&["--config", &cfg], &[]);
    let addr = p.addr;
    let workers: Vec<_> = (0..8).map(|_| tokio::spawn(load_worker(addr))).collect();
    // An h2 client too: it must get GOAWAY at SIGTERM, not when the listener stops.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let req = Request::get(format!("http://{addr}/v1/images"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = up.count();
    p.signal("TERM");
    let term = Instant::now();
    eprintln!("SIGTERM at {term:?}");
    tokio::time::timeout(Duration::from_millis(1500), h2_conn)
        .await
        .expect("the h2 connection was not closed (GOAWAY) within 1.5 s of SIGTERM")
        .unwrap()
        .unwrap();
    let h2_closed = term.elapsed();
    let mut total = Counts::default();
    for w in workers {
        let c = w.await.unwrap();
        total.ok += c.ok;
        total.lost += c.lost;
        total.unsent_retried += c.unsent_retried;
        total.closed_by_server += c.closed_by_server;
        total.refused += c.refused;
    }
    let stopped = term.elapsed();
    println!(
        "drain, shutdown_delay 2s, 8 h1 workers: {total:?}; {} requests before SIGTERM, listener stopped after {stopped:?}; h2 GOAWAY'd connection closed {h2_closed:?} after SIGTERM",
        before
    );
    assert_eq!(total.lost, 0, "{total:?}");
    assert!(
        total.ok > before as u64,
        "no requests served during the delay: {total:?}"
    );
    assert!(
        total.closed_by_server >= 8,
        "responses after SIGTERM must say Connection: close: {total:?}"
    );
    assert_eq!(
        total.refused, 8,
        "every worker ends at the closed listener: {total:?}"
    );
    assert!(stopped >= Duration::from_millis(1900), "{stopped:?}");
    let code = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

// ------------------------------------------------------------------ unix socket

#[tokio::test]
async fn unix_socket_listener_serves_with_its_mode_and_is_removed_after() {
    use std::os::unix::fs::PermissionsExt;
    let up = RecordingUpstream::start(SECRET).await;
    let sock_dir = tempfile::tempdir().unwrap();
    let path = sock_dir.path().join("proxy.sock");
    let toml = toml_with(&up.base(), "socket_mode = \"0660\"", "").replace(
        "listen = \"127.0.0.1:0\"\nadmin_listen",
        &format!("listen = \"unix:{}\"\nadmin_listen", path.display()),
    );
    let (cfg, _d) = config_from(&toml);
    let p = start_proxy(cfg).await;
    assert_eq!(p.listen.to_string(), format!("unix:{}", path.display()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("/v1/images")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.signature_ok));
    p.shutdown();
    assert!(p.wait().await);
    assert!(!path.exists(), "the socket file outlived the listener");
}
