//! Jobs and batch pods, through the real binary: `wait` as an init step, and
//! `POST /quitquitquit` ending the sidecar once the main container is done.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;

/// The test proxy at `upstream` reading its secret from `secret_file`, its admin listener on
/// `admin`, with `extra_server` lines.
fn toml(upstream: &str, secret_file: &str, admin: &str, extra_server: &str) -> String {
    TestConfig::new(upstream)
        .secret_file(secret_file)
        .server(&format!("admin_listen = \"{admin}\""))
        .server(extra_server)
        .toml()
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn wait_cmd(args: &[&str]) -> Command {
    let mut c = bin(&["wait"]);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Waits (bounded) for `child` and returns its exit code and stderr.
fn finish(mut child: std::process::Child, within: Duration) -> (Option<i32>, String) {
    match poll_until_blocking(within, || child.try_wait().unwrap()) {
        Some(status) => {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            (status.code(), err)
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            (None, String::new())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_returns_zero_once_a_starting_proxy_is_ready() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let admin = free_port();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        toml(
            &up.base(),
            &secret.display().to_string(),
            &admin.to_string(),
            "",
        ),
    )
    .unwrap();
    // `wait` starts first, as an init container would, and finds nothing ready: its first
    // probe is accepted here and closed unanswered; then the port is the proxy's.
    let early = std::net::TcpListener::bind(admin).unwrap();
    let waiter = wait_cmd(&["--admin", &admin.to_string(), "--timeout", "20s"])
        .spawn()
        .unwrap();
    early.set_nonblocking(true).unwrap();
    let probed = poll_until_blocking(Duration::from_secs(10), || early.accept().ok());
    assert!(probed.is_some(), "wait never probed the admin address");
    drop((probed, early));
    let started = Instant::now();
    let proxy = Proc::start(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(proxy.admin_addr, admin);
    let (code, err) = tokio::task::spawn_blocking(move || finish(waiter, Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "wait failed: {err}");
    assert!(err.contains("answered 200"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // The same from the configuration: no --admin needed.
    let code = wait_cmd(&["--config", cfg.to_str().unwrap(), "--timeout", "5s"])
        .status()
        .unwrap()
        .code();
    assert_eq!(code, Some(0));
}

#[test]
fn wait_fails_with_a_clear_message_against_nothing() {
    let admin = free_port();
    let started = Instant::now();
    let out = wait_cmd(&["--admin", &admin.to_string(), "--timeout", "700ms"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "http://{admin}/readyz did not answer 200 within 700ms"
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

async fn admin_req(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(body(Bytes::new()))
        .unwrap();
    let (s, _, b) = send(&client(), req).await;
    (s.as_u16(), String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn quitquitquit_drains_in_flight_requests_then_exits_zero() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        toml(
            &up.base(),
            &secret.display().to_string(),
            "127.0.0.1:0",
            "enable_quit = true\nshutdown_grace = \"10s\"",
        ),
    )
    .unwrap();
    let mut p = Proc::start(&["--config", cfg.to_str().unwrap()], &[]);
    // Only POST starts the drain.
    assert_eq!(admin_req(p.admin_addr, "GET", "/quitquitquit").await.0, 405);
    assert_eq!(admin_req(p.admin_addr, "GET", "/readyz").await.0, 200);
    let addr = p.addr;
    let slow = tokio::spawn(async move { send(&client(), get(addr, "/v1/slow/1500")).await });
    assert!(
        eventually(Duration::from_secs(5), || async { up.count() == 1 }).await,
        "the slow request never reached the upstream"
    );
    let (status, text) = admin_req(p.admin_addr, "POST", "/quitquitquit").await;
    assert_eq!((status, text.as_str()), (200, "draining\n"));
    assert_eq!(admin_req(p.admin_addr, "GET", "/readyz").await.0, 503);
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the in-flight request must complete");
    assert_eq!(body, "{\"received\":0}");
    let code = tokio::task::spawn_blocking(move || {
        let c = p.wait_exit(Duration::from_secs(10));
        (c, p.log())
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1);
    assert!(code.1.contains("POST /quitquitquit"), "{}", code.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn quitquitquit_is_off_by_default() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        toml(&up.base(), &secret.display().to_string(), "127.0.0.1:0", ""),
    )
    .unwrap();
    let mut p = Proc::start(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(
        admin_req(p.admin_addr, "POST", "/quitquitquit").await.0,
        405
    );
    assert_eq!(admin_req(p.admin_addr, "GET", "/quitquitquit").await.0, 404);
    assert_eq!(admin_req(p.admin_addr, "GET", "/readyz").await.0, 200);
    let (status, _, _) = send(&client(), get(p.addr, "/v1/images")).await;
    assert_eq!(status, 200);
    assert_eq!(
        p.wait_exit(Duration::from_millis(200)),
        None,
        "the proxy must keep running"
    );
}
