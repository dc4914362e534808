//! Reload of everything, through the real binary: SIGHUP (and `--watch-config`) swaps in new
//! services, pins and allowlists while a request in flight finishes; a bad configuration is
//! refused, logged and counted, and the running one keeps serving; a changed listener address
//! is named as restart-only.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;

const WAIT: Duration = Duration::from_secs(10);

async fn metrics(admin: std::net::SocketAddr) -> String {
    String::from_utf8_lossy(&send(&client(), get(admin, "/metrics")).await.2).into_owned()
}

/// The `Scp-Api-Version` the upstream saw on its last request.
fn last_version(up: &RecordingUpstream) -> String {
    up.requests()
        .last()
        .and_then(|r| r.headers.get("scp-api-version").cloned())
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_a_service_and_refuses_a_bad_configuration() {
    let vs = RecordingUpstream::start(SECRET).await;
    let iam = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let base = TestConfig::new(&vs.base())
        .secret_file(&secret)
        .credentials("watch_interval = \"0s\"")
        .service(r#"allow = ["GET /v1/**", "GET /iam/**"]"#);
    let cfg = base.write(dir.path().join("proxy.toml"));
    let p = Proc::start(&["--config", &cfg], &[]);

    // Before: no iam service, so /iam/... goes to the default service.
    assert_eq!(send(&client(), get(p.addr, "/iam/v1/users")).await.0, 200);
    assert_eq!((vs.count(), iam.count()), (1, 0));

    // A request in flight across the reload finishes (on the stack it started on).
    let addr = p.addr;
    let slow = tokio::spawn(async move { send(&client(), get(addr, "/v1/slow/1500")).await });
    assert!(
        eventually(WAIT, || async { vs.count() == 2 }).await,
        "the slow request never reached the upstream"
    );

    // Add iam, re-pin virtualserver, tighten its allowlist; SIGHUP.
    base.clone()
        .service(r#"api_version = "1.2""#)
        .service(r#"allow = ["GET /v1/images"]"#)
        .add_service("iam", &iam.base(), "1.4")
        .write(&cfg);
    p.signal("HUP");
    assert!(
        eventually(WAIT, || async {
            p.log().contains("configuration and key pair reloaded")
        })
        .await,
        "no reload; log:\n{}",
        p.log()
    );
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(
        (status.as_u16(), &body[..]),
        (200, &b"{\"received\":0}"[..])
    );

    assert_eq!(send(&client(), get(p.addr, "/iam/v1/users")).await.0, 200);
    assert_eq!(iam.count(), 1, "the added service did not get its request");
    assert_eq!(last_version(&iam), "iam 1.4");
    assert_eq!(send(&client(), get(p.addr, "/v1/images")).await.0, 200);
    assert_eq!(last_version(&vs), "virtualserver 1.2");
    let (status, _, body) = send(&client(), get(p.addr, "/v1/servers")).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "operation_not_allowed")
    );

    // A bad configuration (and a listener change with it) is refused as a whole.
    let bad = base
        .clone()
        .add_service("iam", &iam.base(), "1.4")
        .add_service("vpc", "ftp://vpc.example", "1.0")
        .server("listen = \"127.0.0.1:1\"");
    bad.write(&cfg);
    p.signal("HUP");
    let failed = "scp_auth_proxy_config_reloads_total{result=\"failed\"} 1";
    let admin = p.admin_addr;
    assert!(
        eventually(
            WAIT,
            || async move { metrics(admin).await.contains(failed) }
        )
        .await,
        "the refused reload was never counted; log:\n{}",
        p.log()
    );
    assert!(
        eventually(WAIT, || async {
            let log = p.log();
            log.contains("reload failed; still using the previous configuration and key pair")
                && log.contains("services.vpc.upstream")
        })
        .await,
        "{}",
        p.log()
    );
    // Still the second configuration: its allowlist and pin, on the same listener.
    let (status, _, _) = send(&client(), get(p.addr, "/v1/servers")).await;
    assert_eq!(status.as_u16(), 403);
    assert_eq!(send(&client(), get(p.addr, "/v1/images")).await.0, 200);
    assert_eq!(last_version(&vs), "virtualserver 1.2");
    assert!(metrics(admin)
        .await
        .contains("scp_auth_proxy_config_reloads_total{result=\"ok\"} 1"));

    // A valid configuration with another listen address: applied, the address named.
    base.clone()
        .add_service("iam", &iam.base(), "1.4")
        .server("listen = \"127.0.0.1:1\"")
        .write(&cfg);
    p.signal("HUP");
    let ok2 = "scp_auth_proxy_config_reloads_total{result=\"ok\"} 2";
    assert!(
        eventually(WAIT, || async move { metrics(admin).await.contains(ok2) }).await,
        "{}",
        p.log()
    );
    // The metric is counted before the restart-only notice is logged: wait for the line too.
    let log = poll_until(WAIT, || async {
        let log = p.log();
        (log.contains("applies on restart only")
            && log.contains("server.listen (127.0.0.1:0 -> 127.0.0.1:1)"))
        .then_some(log)
    })
    .await
    .unwrap_or_else(|| panic!("no restart-only notice; log:\n{}", p.log()));
    for line in log
        .lines()
        .filter(|l| l.contains("reload") || l.contains("restart only") || l.contains("\"added\""))
    {
        println!("{line}");
    }
    // The old allowlist is back and the proxy still listens where it did.
    assert_eq!(send(&client(), get(p.addr, "/v1/servers")).await.0, 200);
    assert!(!log.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_config_reloads_when_the_file_changes() {
    let vs = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let base = TestConfig::new(&vs.base())
        .secret_file(&secret)
        .credentials("watch_interval = \"100ms\"");
    let cfg = base.write(dir.path().join("proxy.toml"));
    let p = Proc::start(&["--config", &cfg, "--watch-config"], &[]);
    assert_eq!(send(&client(), get(p.addr, "/v1/images")).await.0, 200);
    base.service(r#"allow = ["GET /v1/servers"]"#).write(&cfg);
    let addr = p.addr;
    assert!(
        eventually(WAIT, || async move {
            let req = Request::get(format!("http://{addr}/v1/images"))
                .body(body(Bytes::new()))
                .unwrap();
            send(&client(), req).await.0 == 403
        })
        .await,
        "the changed file was never applied; log:\n{}",
        p.log()
    );
    assert!(
        eventually(WAIT, || async {
            p.log().contains("a configuration or key file changed")
        })
        .await,
        "{}",
        p.log()
    );
}
