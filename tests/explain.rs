//! Explainers through the real listener: each hint from a crafted upstream answer, the body
//! passed unchanged, the skew gauge, and the refusal to start on a loop.

mod common;

use std::time::{Duration, SystemTime};

use common::*;

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

async fn proxy_for(
    up: &ScriptedUpstream,
    version: &str,
) -> (scp_auth_proxy::Running, tempfile::TempDir) {
    let (cfg, dir) = TestConfig::new(&up.base())
        .server("check_live_versions = false")
        .service(&format!("api_version = \"{version}\""))
        .load();
    (start_proxy(cfg).await, dir)
}

/// Sends `GET path`, returns (status, hint header, body).
async fn hint_for(p: &scp_auth_proxy::Running, path: &str) -> (u16, Option<String>, String) {
    let (s, h, b) = send(&client(), get(p.addr, path)).await;
    (
        s.as_u16(),
        h.get("scp-proxy-hint")
            .map(|v| v.to_str().unwrap().to_owned()),
        String::from_utf8_lossy(&b).into_owned(),
    )
}

#[tokio::test]
async fn each_refusal_gets_its_hint_and_the_body_passes_unchanged() {
    let body = r#"{"errors":[{"code":"X","status":401}]}"#;
    let up =
        ScriptedUpstream::start(vec![Scripted::new(401, body).header("date", &http_date(0))]).await;
    let (p, _dir) = proxy_for(&up, "1.3").await;

    let (status, hint, got) = hint_for(&p, "/v1/images").await;
    assert_eq!((status, got.as_str()), (401, body));
    let hint = hint.expect("a 401 gets a hint");
    assert!(hint.starts_with("unknown_access_key: "), "{hint}");
    assert!(hint.contains(&format!("{ACCESS_KEY:?}")), "{hint}");
    assert!(!hint.contains(SECRET), "{hint}");
    println!("hint: {hint}");

    // Clock skew: the upstream's Date 10 minutes behind ours.
    up.set_script(vec![
        Scripted::new(401, body).header("date", &http_date(-600))
    ]);
    let (_, hint, _) = hint_for(&p, "/v1/images").await;
    let hint = hint.unwrap();
    assert!(
        hint.starts_with("clock_skew: the local clock is 60"),
        "{hint}"
    );
    let metrics = scp_auth_proxy::metrics::Metrics::encode(&p.metrics);
    let skew: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("scp_auth_proxy_clock_skew_seconds "))
        .expect("skew gauge")
        .parse()
        .unwrap();
    assert!((599.0..=602.0).contains(&skew), "{skew}");

    up.set_script(vec![
        Scripted::new(403, "{}").header("content-type", "application/json")
    ]);
    let (_, hint, _) = hint_for(&p, "/v1/images/img-1").await;
    assert!(hint.unwrap().starts_with("forbidden: "));

    up.set_script(vec![Scripted::new(404, "")]);
    let (_, hint, _) = hint_for(&p, "/v1/no-such-thing").await;
    let hint = hint.unwrap();
    assert!(
        hint.starts_with("unknown_path: GET /v1/no-such-thing is not"),
        "{hint}"
    );
    let (_, hint, _) = hint_for(&p, "/v1/images/img-1").await;
    assert!(hint.unwrap().starts_with("unsigned_404: "));
    // SCP's JSON "no such image" on a known path: nothing to add.
    up.set_script(vec![
        Scripted::new(404, "{}").header("content-type", "application/json")
    ]);
    assert_eq!(hint_for(&p, "/v1/images/img-1").await.1, None);

    up.set_script(vec![Scripted::new(406, "{}")]);
    assert!(hint_for(&p, "/v1/images")
        .await
        .1
        .unwrap()
        .starts_with("version_refused: "));
    up.set_script(vec![Scripted::new(200, "{}")]);
    assert_eq!(hint_for(&p, "/v1/images").await.1, None);
    p.shutdown();
    p.wait().await;
}

#[tokio::test]
async fn a_retired_or_unknown_pin_is_named_on_406() {
    let up = ScriptedUpstream::start(vec![Scripted::new(406, "{}")]).await;
    let (p, _dir) = proxy_for(&up, "1.0").await;
    let hint = hint_for(&p, "/v1/images").await.1.unwrap();
    assert!(
        hint.starts_with("version_retired: Scp-Api-Version \"virtualserver 1.0\" is DEPRECATED"),
        "{hint}"
    );
    assert!(hint.contains("2025-12-31"), "{hint}");
    let (p2, _dir2) = proxy_for(&up, "9.9").await;
    let hint = hint_for(&p2, "/v1/images").await.1.unwrap();
    assert!(hint.starts_with("version_unknown: "), "{hint}");
}

#[tokio::test]
async fn an_upstream_that_is_the_proxy_itself_is_refused_at_start() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let (cfg, _dir) = TestConfig::new(&format!("http://127.0.0.1:{port}"))
        .server(&format!("listen = \"127.0.0.1:{port}\""))
        .load();
    let creds = credentials(&cfg);
    let err = match scp_auth_proxy::start(cfg, creds).await {
        Ok(_) => panic!("a loop must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("services.virtualserver.upstream")
            && err.contains("server.listen")
            && err.contains("loop"),
        "{err}"
    );
}
