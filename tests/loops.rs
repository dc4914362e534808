//! Loops back into the sidecar, through the real binary: an egress proxy (`HTTPS_PROXY`) that
//! is the proxy's own forward-proxy or data-plane listener is refused at start, and a reload
//! that would send a service through it is refused while the running configuration serves on.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(10);
const PUBLIC: &str = "https://virtualserver.kr-west1.e.samsungsdscloud.com";

/// A port nothing listens on now (bound on 127.0.0.1:0, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The egress variables a test sets, the ambient ones (either case) overridden: an empty
/// value counts as unset.
fn egress_env(https_proxy: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SCP_SECRET_KEY", SECRET.to_owned()),
        ("HTTPS_PROXY", https_proxy.to_owned()),
        ("https_proxy", String::new()),
        ("HTTP_PROXY", String::new()),
        ("http_proxy", String::new()),
        ("NO_PROXY", String::new()),
        ("no_proxy", String::new()),
    ]
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn an_egress_proxy_that_is_the_forward_listener_is_refused_at_start() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new(PUBLIC)
        .raw(&format!("[forward_proxy]\nlisten = \"127.0.0.1:{port}\""))
        .write(dir.path().join("proxy.toml"));
    // `localhost` is the loopback listener too.
    let proxy = format!("http://localhost:{port}");
    let env = egress_env(&proxy);
    let (code, out) = run(&["--config", &cfg], &as_refs(&env));
    assert_eq!(code, Some(1), "{out}");
    let want = format!(
        "HTTPS_PROXY {proxy} is this proxy's own forward_proxy.listen (127.0.0.1:{port}): services.virtualserver's signed requests would go out through it and back into the proxy (a loop)"
    );
    assert!(out.contains(&want), "{out}");
    assert!(
        !out.contains("\"serving\"") && !out.contains(" serving"),
        "{out}"
    );

    // The same egress proxy with the upstream's host in NO_PROXY is no loop: it starts.
    let mut env = env;
    env.retain(|(k, _)| *k != "NO_PROXY");
    env.push(("NO_PROXY", ".samsungsdscloud.com".to_owned()));
    let p = Proc::start(&["--config", &cfg], &as_refs(&env));
    assert_eq!(p.forward_addr.map(|a| a.port()), Some(port));
}

#[test]
fn an_egress_proxy_that_is_the_data_plane_listener_is_refused_at_start() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new(PUBLIC)
        .server(&format!("listen = \"127.0.0.1:{port}\""))
        .write(dir.path().join("proxy.toml"));
    let proxy = format!("http://127.0.0.1:{port}");
    let (code, out) = run(&["--config", &cfg], &as_refs(&egress_env(&proxy)));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "HTTPS_PROXY {proxy} is this proxy's own server.listen (127.0.0.1:{port})"
        )) && out.contains("(a loop)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_would_send_a_service_through_the_own_listener_is_refused() {
    let up = RecordingUpstream::start(SECRET).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    // At start the upstream is loopback, which never goes through the egress proxy: no loop.
    let base = TestConfig::new(&up.base()).server(&format!("listen = \"127.0.0.1:{port}\""));
    let cfg = base.write(&path);
    let proxy = format!("http://127.0.0.1:{port}");
    let env = egress_env(&proxy);
    let p = Proc::start(&["--config", &cfg], &as_refs(&env));
    assert_eq!(send(&client(), get(p.addr, "/v1/images")).await.0, 200);
    assert_eq!(up.count(), 1);

    // The public upstream would be reached through HTTPS_PROXY, the proxy itself.
    base.clone()
        .service(&format!("upstream = \"{PUBLIC}\""))
        .write(&path);
    p.signal("HUP");
    let want = format!("HTTPS_PROXY {proxy} is this proxy's own server.listen");
    assert!(
        eventually(WAIT, || async { p.log().contains("reload failed") }).await,
        "no reload attempt; log:\n{}",
        p.log()
    );
    let log = p.log();
    assert!(log.contains(&want) && log.contains("(a loop)"), "{log}");
    assert!(
        !log.contains("configuration and key pair reloaded"),
        "{log}"
    );
    let metrics = String::from_utf8_lossy(&send(&client(), get(p.admin_addr, "/metrics")).await.2)
        .into_owned();
    assert!(
        metrics.contains("config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );

    // The running configuration still serves, to the loopback upstream.
    assert_eq!(send(&client(), get(p.addr, "/v1/images")).await.0, 200);
    assert_eq!(up.count(), 2);
}
