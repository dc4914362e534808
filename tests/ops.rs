//! Operations, through the real binary: graceful shutdown, key rotation, metrics, limits, and
//! a secret that never reaches the log.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;

/// Bound for every poll here.
const WAIT: Duration = Duration::from_secs(10);

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    fn write(&self, name: &str, content: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// The test proxy at `upstream`, reading its secret from `secret_file`.
fn proxy(upstream: &str, secret_file: &str) -> TestConfig {
    TestConfig::new(upstream).secret_file(secret_file)
}

async fn admin(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let (s, _, b) = send(&client(), get(addr, path)).await;
    (s.as_u16(), String::from_utf8_lossy(&b).into_owned())
}

/// Sends one GET through the proxy; true when the upstream saw a valid signature.
async fn signed_ok(up: &RecordingUpstream, proxy: std::net::SocketAddr) -> bool {
    let (status, _, _) = send(&client(), get(proxy, "/v1/images")).await;
    assert_eq!(status, 200);
    up.requests().last().unwrap().signature_ok
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let up = RecordingUpstream::start(SECRET).await;
    let f = Files::new();
    let secret = f.write("secret", &format!("{SECRET}\n"));
    let cfg = f.write(
        "p.toml",
        &proxy(&up.base(), &secret)
            .server("shutdown_grace = \"10s\"")
            .toml(),
    );
    let mut p = Proc::start(&["--config", &cfg], &[]);
    assert_eq!(admin(p.admin_addr, "/readyz").await.0, 200);
    let addr = p.addr;
    let slow = tokio::spawn(async move { send(&client(), get(addr, "/v1/slow/1500")).await });
    // Wait until the upstream holds the request, then ask the proxy to stop.
    assert!(
        eventually(WAIT, || async { up.count() == 1 }).await,
        "the slow request never reached the upstream"
    );
    p.signal("TERM");
    // Draining: readiness says 503 and new connections are refused.
    let admin_addr = p.admin_addr;
    assert!(
        eventually(WAIT, || async move {
            admin(admin_addr, "/readyz").await.0 == 503
        })
        .await,
        "/readyz never said 503 after SIGTERM"
    );
    assert!(
        eventually(WAIT, || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "still accepting after SIGTERM"
    );
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the in-flight request must complete");
    assert_eq!(body, "{\"received\":0}");
    let code = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_in_the_rewritten_secret() {
    let up = RecordingUpstream::start("old-secret").await;
    let f = Files::new();
    let secret = f.write("secret", "old-secret\n");
    // No file watching: only the signal may reload.
    let cfg = f.write(
        "p.toml",
        &proxy(&up.base(), &secret)
            .credentials("watch_interval = \"0s\"")
            .toml(),
    );
    let p = Proc::start(&["--config", &cfg], &[]);
    assert!(
        signed_ok(&up, p.addr).await,
        "old key accepted before rotation"
    );
    // Rotate on both sides; the proxy has not reloaded yet, so the upstream rejects it.
    std::fs::write(&secret, "new-secret\n").unwrap();
    up.set_secret("new-secret");
    assert!(
        !signed_ok(&up, p.addr).await,
        "old key must be rejected after rotation"
    );
    p.signal("HUP");
    let ok = eventually(WAIT, || signed_ok(&up, p.addr)).await;
    assert!(ok, "new key not used after SIGHUP; log:\n{}", p.log());
    // A bad rewrite keeps the running key.
    std::fs::write(&secret, "\n").unwrap();
    p.signal("HUP");
    let admin_addr = p.admin_addr;
    let failed = "scp_auth_proxy_credential_reloads_total{result=\"failed\"} 1";
    assert!(
        eventually(WAIT, || async move {
            admin(admin_addr, "/metrics").await.1.contains(failed)
        })
        .await,
        "the failed reload was never counted; log:\n{}",
        p.log()
    );
    assert!(signed_ok(&up, p.addr).await);
    let (_, metrics) = admin(p.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("scp_auth_proxy_credential_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scp_auth_proxy_credential_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(p.log().contains("reload failed"), "{}", p.log());
    // The configuration is re-read too, and applies whole (tests/reload.rs has the rest).
    std::fs::write(&secret, "new-secret\n").unwrap();
    let toml = std::fs::read_to_string(&cfg).unwrap().replace(
        "watch_interval = \"0s\"",
        "watch_interval = \"0s\"\naccount_id = \"acct-after-reload\"",
    );
    let toml = toml.replace(
        "api_version = \"1.3\"",
        "api_version = \"1.3\"\ntimeout = \"9s\"",
    );
    std::fs::write(&cfg, toml).unwrap();
    p.signal("HUP");
    let account = poll_until(WAIT, || async {
        assert!(signed_ok(&up, p.addr).await);
        let r = up.requests().pop().unwrap();
        let account = r.headers.get("scp-accountid")?;
        Some(account.to_str().unwrap().to_owned())
    })
    .await;
    assert_eq!(account.as_deref(), Some("acct-after-reload"));
    assert!(
        eventually(WAIT, || async {
            p.log().contains("configuration and key pair reloaded")
        })
        .await,
        "{}",
        p.log()
    );
}

/// Rotation end to end with the real emulator: both re-read their key files on SIGHUP; until
/// the proxy has, the emulator rejects the old key; after, it accepts the new one.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_rotation_against_the_emulator() {
    let f = Files::new();
    let emu_secret = f.write("emulator-secret", "old-pair-secret\n");
    let emu = Proc::emulator(&["--listen", "127.0.0.1:0", "--secret-key-file", &emu_secret]);
    let secret = f.write("secret", "old-pair-secret\n");
    let toml = proxy(&format!("http://{}", emu.addr), &secret)
        .credentials("watch_interval = \"0s\"\naccess_key = \"emulator-access-key\"")
        .toml();
    let cfg = f.write("p.toml", &toml);
    let p = Proc::start(&["--config", &cfg], &[]);
    let status = || async { send(&client(), get(p.addr, "/v1/images")).await };
    assert_eq!(status().await.0, 200);
    // The cloud side rotates first: the proxy's old key is now refused with SCP's 401.
    std::fs::write(&emu_secret, "new-pair-secret\n").unwrap();
    emu.signal("HUP");
    let refused = poll_until(WAIT, || async {
        let (s, _, body) = status().await;
        (s == 401).then_some(body)
    })
    .await;
    let body = refused.expect("the emulator kept accepting the old key");
    assert!(
        String::from_utf8_lossy(&body).contains("\"errors\""),
        "{body:?}"
    );
    // Then the sidecar: the next request carries the new key and is accepted.
    std::fs::write(&secret, "new-pair-secret\n").unwrap();
    p.signal("HUP");
    let ok = eventually(WAIT, || async { status().await.0 == 200 }).await;
    assert!(ok, "proxy still signs with the old key; log:\n{}", p.log());
    for log in [p.log(), emu.log()] {
        assert!(
            !log.contains("pair-secret"),
            "a secret reached a log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_file_change_is_noticed_without_a_signal() {
    let up = RecordingUpstream::start("first").await;
    let f = Files::new();
    // Kubernetes layout: secret -> ..data/secret, ..data -> ..v1
    std::fs::create_dir(f.path("..v1")).unwrap();
    std::fs::write(f.path("..v1/secret"), "first\n").unwrap();
    std::os::unix::fs::symlink("..v1", f.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/secret", f.path("secret")).unwrap();
    let cfg = f.write(
        "p.toml",
        &proxy(&up.base(), &f.path("secret"))
            .credentials("watch_interval = \"200ms\"")
            .toml(),
    );
    let p = Proc::start(&["--config", &cfg], &[]);
    assert!(signed_ok(&up, p.addr).await);
    std::fs::create_dir(f.path("..v2")).unwrap();
    std::fs::write(f.path("..v2/secret"), "second\n").unwrap();
    std::os::unix::fs::symlink("..v2", f.path("..data_tmp")).unwrap();
    std::fs::rename(f.path("..data_tmp"), f.path("..data")).unwrap();
    up.set_secret("second");
    let ok = eventually(WAIT, || signed_ok(&up, p.addr)).await;
    assert!(
        ok,
        "the swapped key file was not picked up; log:\n{}",
        p.log()
    );
}

#[tokio::test]
async fn metrics_count_requests_and_rejections() {
    let up = RecordingUpstream::start(SECRET).await;
    // The shutdown delay keeps the listeners up long enough to see /readyz turn 503.
    let (cfg, _d) = TestConfig::new(&up.base())
        .server("shutdown_delay = \"3s\"")
        .load();
    let proxy = start_proxy(cfg).await;
    let c = client();
    for _ in 0..3 {
        send(&c, get(proxy.addr, "/v1/images")).await;
    }
    send(&c, get(proxy.addr, "/v1/status/404")).await;
    let req = Request::get(format!("http://{}/v1/images", proxy.addr))
        .header("scp-api-version", "virtualserver 9.9")
        .body(body(Bytes::new()))
        .unwrap();
    send(&c, req).await;
    let (code, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "scp_auth_proxy_requests_total{service=\"virtualserver\",method=\"GET\",status_class=\"2xx\",listener=\"plain\"} 3",
        "scp_auth_proxy_requests_total{service=\"virtualserver\",method=\"GET\",status_class=\"4xx\",listener=\"plain\"} 2",
        "scp_auth_proxy_rejections_total{code=\"api_version_mismatch\"} 1",
        "scp_auth_proxy_upstream_latency_seconds_count{service=\"virtualserver\"} 4",
        "scp_auth_proxy_in_flight_requests 0",
        "scp_auth_proxy_build_info{version=",
        "scp_auth_proxy_key_age_seconds ",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    assert_eq!(admin(proxy.admin_addr, "/healthz").await.0, 200);
    assert_eq!(admin(proxy.admin_addr, "/readyz").await.0, 200);
    proxy.shutdown();
    assert_eq!(admin(proxy.admin_addr, "/readyz").await.0, 503);
}

#[tokio::test]
async fn concurrency_limit_answers_503_then_recovers() {
    let up = RecordingUpstream::start(SECRET).await;
    let (cfg, _d) = TestConfig::new(&up.base())
        .server("max_concurrent_requests = 2")
        .load();
    let proxy = start_proxy(cfg).await;
    let addr = proxy.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { send(&client(), get(addr, "/v1/slow/800")).await }))
        .collect();
    assert!(
        eventually(WAIT, || async { up.count() == 2 }).await,
        "the two slow requests never reached the upstream"
    );
    let (status, headers, b) = send(&client(), get(addr, "/v1/images")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(error_code(&b), "overloaded");
    for s in slow {
        assert_eq!(s.await.unwrap().0, 200);
    }
    let (status, _, _) = send(&client(), get(addr, "/v1/images")).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.count(),
        3,
        "the refused request must not reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_never_contain_the_secret_or_signature() {
    const SENTINEL: &str = "SENTINEL-s3cr3t-9f2c";
    let up = RecordingUpstream::start(SENTINEL).await;
    let f = Files::new();
    let secret = f.write("secret", &format!("{SENTINEL}\n"));
    let cfg = f.write("p.toml", &proxy(&up.base(), &secret).toml());
    let mut p = Proc::start(&["--config", &cfg], &[("RUST_LOG", "trace")]);
    let c = client();
    send(&c, get(p.addr, "/v1/images?x=1")).await;
    let post = Request::post(format!("http://{}/v1/images", p.addr))
        .header("scp-signature", "client-forged")
        .body(body("{\"name\":\"x\"}"))
        .unwrap();
    send(&c, post).await;
    send(&c, get(p.addr, "/v1/status/500")).await;
    p.signal("HUP");
    // The reload's own trace lines are part of what must not leak: wait for it to finish.
    assert!(
        eventually(WAIT, || async { p.log().contains("key pair reloaded") }).await,
        "no reload after SIGHUP; log:\n{}",
        p.log()
    );
    p.signal("TERM");
    // Until it has exited and its output is read to the end: the whole log is checked.
    let code = tokio::task::block_in_place(|| p.wait_exit(WAIT));
    assert_eq!(code, Some(0), "log:\n{}", p.log());
    let log = p.log();
    // Trace level was on (hyper and hyper-util log at trace; how many lines depends on
    // their versions, so only their presence is asserted).
    assert!(
        log.contains("\"level\":\"TRACE\""),
        "expected a trace-level log, got:\n{log}"
    );
    assert!(!log.contains(SENTINEL), "the secret reached the log");
    for r in up.requests() {
        let sig = r.headers["scp-signature"].to_str().unwrap();
        assert!(!log.contains(sig), "a signature reached the log");
    }
    // check-config prints the config with the secret redacted.
    let (code, all) = run(
        &["check-config", "--config", &cfg],
        &[("RUST_LOG", "trace")],
    );
    assert_eq!(code, Some(0), "{all}");
    assert!(
        all.contains("<redacted>") && !all.contains(SENTINEL),
        "{all}"
    );
}
