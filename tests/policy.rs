//! Request policies through the real listener: the proxy started in-process on 127.0.0.1:0 in
//! front of a recording upstream (rejects never reach it; valid imports arrive byte-identical
//! and correctly signed) and in front of the built-in SCP emulator.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::json;

use common::{body, client, error_code, send, RecordingUpstream, TestConfig, SECRET};
use scp_auth_proxy::catalog::{self, Date};

type Body = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

const ACCT: &str = "0123456789abcdef0123456789abcdef";
const OTHER: &str = "fedcba9876543210fedcba9876543210";
const IMPORT: &str = "/v1/images/img-1/import";

fn good_url() -> String {
    format!("https://object-store.kr-west1.e.samsungsdscloud.com/{ACCT}:bucket/images/ubuntu.qcow2")
}

/// virtualserver with an allowlist, and iam without one, both at `upstream`.
fn config(upstream: &str, pin: &str) -> TestConfig {
    TestConfig::new(upstream)
        .server("check_live_versions = false\nmax_inspected_body_bytes = 65536")
        .credentials(&format!("account_id = \"{ACCT}\""))
        .service(&format!("api_version = \"{pin}\""))
        .service("allow_unsupported_version = true")
        .service(r#"allow = ["GET /v1/images/**", "POST /v1/images", "POST /v1/images/*/import"]"#)
        .add_service("iam", upstream, "1.0")
}

struct Setup {
    up: RecordingUpstream,
    proxy: scp_auth_proxy::Running,
    _dir: tempfile::TempDir,
}

async fn setup_with(pin: &str) -> Setup {
    let up = RecordingUpstream::start(SECRET).await;
    let (cfg, dir) = config(&up.base(), pin).load();
    let proxy = common::start_proxy(cfg).await;
    Setup {
        up,
        proxy,
        _dir: dir,
    }
}

async fn setup() -> Setup {
    setup_with("1.3").await
}

fn post(addr: std::net::SocketAddr, path: &str, b: impl Into<Bytes>) -> Request<Body> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body(b))
        .unwrap()
}

#[tokio::test]
async fn valid_import_arrives_byte_identical_and_signed() {
    let s = setup().await;
    let c = client();
    // Odd but valid JSON: whitespace, key order, an extra field. Forwarded as sent.
    let raw = format!(
        "{{\n\t\"description\" : \"é\\u00e9\",   \"url\":\"{}\"  }}\r\n",
        good_url()
    );
    for path in [IMPORT.to_owned(), format!("/virtualserver{IMPORT}")] {
        let before = s.up.count();
        let (status, _, b) = send(&c, post(s.proxy.addr, &path, raw.clone())).await;
        assert_eq!(status, StatusCode::OK, "{path}: {b:?}");
        let seen = s.up.requests();
        assert_eq!(seen.len(), before + 1);
        let r = seen.last().unwrap();
        assert_eq!(r.target, IMPORT);
        assert_eq!(r.body, raw.as_bytes(), "byte-identical");
        assert_eq!(r.headers["content-length"], raw.len().to_string());
        assert_eq!(r.headers["scp-api-version"], "virtualserver 1.3");
        assert!(r.signature_ok, "signed over what arrived");
    }
    // Image creation with a good URL passes too.
    let create = json!({"name": "n", "os_distro": "ubuntu", "url": good_url()}).to_string();
    let (status, _, _) = send(&c, post(s.proxy.addr, "/v1/images", create.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.up.requests().last().unwrap().body, create.as_bytes());
}

#[tokio::test]
async fn rejects_answer_json_and_never_reach_upstream() {
    let s = setup().await;
    let c = client();
    let host = "https://object-store.kr-west1.e.samsungsdscloud.com";
    let u = |url: String| json!({ "url": url }).to_string();
    let long = format!("{host}/{ACCT}:b/{}.qcow2", "k".repeat(255));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            IMPORT,
            u(format!("{host}/{ACCT}:b/x.QCOW2")),
            400,
            "url_not_qcow2",
        ),
        (
            IMPORT,
            u(format!("{host}/{ACCT}:b/x.qcow2?x=1")),
            400,
            "url_has_query",
        ),
        (
            IMPORT,
            u(format!("{host}/{ACCT}:b/x.qcow2.gz")),
            400,
            "url_not_qcow2",
        ),
        (
            IMPORT,
            u(format!("{host}/{ACCT}:b/x.qcow2#f")),
            400,
            "url_has_fragment",
        ),
        (
            IMPORT,
            u(good_url().replace("https", "http")),
            400,
            "url_not_https",
        ),
        (
            IMPORT,
            u(good_url().replace("https://", "https://u:p@")),
            400,
            "url_has_userinfo",
        ),
        (
            IMPORT,
            u(good_url().replace("kr-west1", "kr-east1")),
            400,
            "url_wrong_region",
        ),
        // (url_wrong_env needs an SCP upstream host to learn the env from: unit-tested)
        (
            IMPORT,
            u(good_url().replace(ACCT, OTHER)),
            400,
            "url_wrong_account",
        ),
        (
            IMPORT,
            u(good_url().replace("object-store", "evil")),
            400,
            "url_wrong_host",
        ),
        (
            IMPORT,
            u(good_url().replace("ubuntu", "ub untu")),
            400,
            "url_invalid_characters",
        ),
        (IMPORT, u(long), 400, "url_too_long"),
        (IMPORT, "{}".into(), 400, "url_missing"),
        (IMPORT, r#"{"url": 7}"#.into(), 400, "url_not_string"),
        (IMPORT, "[]".into(), 400, "json_not_object"),
        (IMPORT, "{\"url\":".into(), 400, "invalid_json"),
        (
            IMPORT,
            format!(r#"{{"url":"{}","url":"https://evil/x.qcow2"}}"#, good_url()),
            400,
            "duplicate_key",
        ),
        (
            IMPORT,
            format!(r#"{{"url":"{}"}}"#, good_url().replace('/', "\\/")),
            400,
            "url_invalid_characters",
        ),
        (
            IMPORT,
            format!(r#"{{"pad":"{}"}}"#, "a".repeat(70_000)),
            413,
            "body_too_large",
        ),
        (
            "/v1/images",
            u("https://evil.example/x.qcow2".into()),
            400,
            "url_wrong_host",
        ),
        // with the service prefix
        (
            "/virtualserver/v1/images/i/import",
            "{}".into(),
            400,
            "url_missing",
        ),
        // allowlist
        ("/v1/servers", "{}".into(), 403, "operation_not_allowed"),
        (
            "/v1/images/i/export",
            "{}".into(),
            403,
            "operation_not_allowed",
        ),
        (
            "/v1/images/i/%2e%2e/x",
            "{}".into(),
            400,
            "path_not_canonical",
        ),
        (
            "/v1/images/i/../../servers",
            "{}".into(),
            400,
            "path_not_canonical",
        ),
    ];
    for (path, b, status, code) in cases {
        let (got, _, resp) = send(&c, post(s.proxy.addr, path, b.clone())).await;
        assert_eq!(got.as_u16(), status, "{path} {b:.80}: {resp:?}");
        assert_eq!(error_code(&resp), code, "{path} {b:.80}");
    }
    // A pinned-version mismatch and a DELETE outside the list.
    let mut req = common::get(s.proxy.addr, "/v1/images");
    req.headers_mut()
        .insert("scp-api-version", "virtualserver 1.2".parse().unwrap());
    let (got, _, resp) = send(&c, req).await;
    assert_eq!(
        (got.as_u16(), error_code(&resp).as_str()),
        (400, "api_version_mismatch")
    );
    let req = Request::delete(format!("http://{}/v1/images/x", s.proxy.addr))
        .body(body(Bytes::new()))
        .unwrap();
    let (got, _, resp) = send(&c, req).await;
    assert_eq!(got, StatusCode::FORBIDDEN);
    let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("virtualserver") && m.contains("\"POST /v1/images/*/import\""),
        "{m}"
    );

    assert_eq!(
        s.up.count(),
        0,
        "nothing went upstream: {:?}",
        s.up.requests()
    );

    // Allowlist decisions are counted by rule.
    let metrics = s.proxy.metrics.encode();
    assert!(
        metrics.contains(
            r#"scp_auth_proxy_allowlist_decisions_total{service="virtualserver",rule="none"} 5"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scp_auth_proxy_allowlist_decisions_total{service="virtualserver",rule="POST /v1/images/*/import"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn chunked_body_over_the_bound_is_413_and_never_forwarded() {
    let s = setup().await;
    let chunk = "a".repeat(40_000);
    let mut req = format!(
        "POST {IMPORT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for part in [r#"{"pad":""#, &chunk, &chunk, r#""}"#] {
        req.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
    }
    req.push_str("0\r\n\r\n");
    let answer = common::raw(s.proxy.addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"body_too_large\""), "{answer}");
    assert_eq!(s.up.count(), 0);

    // A small chunked import is forwarded with a Content-Length and the same bytes.
    let b = json!({ "url": good_url() }).to_string();
    let (a, z) = b.split_at(10);
    let req = format!(
        "POST {IMPORT} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{z}\r\n0\r\n\r\n",
        a.len(),
        z.len()
    );
    let answer = common::raw(s.proxy.addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let r = s.up.requests().pop().unwrap();
    assert_eq!(r.body, b.as_bytes());
    assert_eq!(r.headers["content-length"], b.len().to_string());
    assert!(r.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn service_without_allowlist_is_not_restricted_and_not_inspected() {
    let s = setup().await;
    let c = client();
    // iam has no allowlist and is not virtualserver: anything passes, bodies untouched.
    let (status, _, _) = send(
        &c,
        post(s.proxy.addr, "/iam/v1/images/x/import", "not json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let req = Request::delete(format!("http://{}/iam/v1/anything", s.proxy.addr))
        .body(body(Bytes::new()))
        .unwrap();
    let (status, _, _) = send(&c, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = s.up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, "not json");
    assert_eq!(seen[0].headers["scp-api-version"], "iam 1.0");
}

#[tokio::test]
async fn past_its_date_pin_still_serves_and_days_left_goes_negative() {
    // virtualserver 1.0 ended 2025-12-31: serving starts anyway (no crash loop) and says so.
    let s = setup_with("1.0").await;
    let c = client();
    let (status, _, _) = send(&c, common::get(s.proxy.addr, "/v1/images")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.up.requests()[0].headers["scp-api-version"],
        "virtualserver 1.0"
    );
    let today = Date::of(std::time::SystemTime::now());
    let left = catalog::find("virtualserver", "1.0")
        .unwrap()
        .days_left(today)
        .unwrap();
    assert!(left < 0);
    let metrics = s.proxy.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "scp_auth_proxy_api_version_days_left{{service=\"virtualserver\"}} {left}"
        )),
        "{metrics}"
    );
}

/// Each dated pin has its own days-left series: the service's pin with `{service}` alone, an
/// operation pin with its rule as `operation`; a pin the catalog has no dates for has none.
#[tokio::test]
async fn days_left_per_operation_pin() {
    let up = RecordingUpstream::start(SECRET).await;
    let (cfg, _dir) = config(&up.base(), "1.3")
        .service_named(
            "virtualserver",
            r#"allow = ["GET /v1/images/**", "POST /v1/images/*/import", "POST /v1/servers/*/security-groups"]"#,
        )
        .service_named(
            "virtualserver",
            "[services.virtualserver.operation_versions]\n\
             \"POST /v1/images/*/import\" = \"1.1\"\n\
             \"POST /v1/servers/*/security-groups\" = \"1.0\"",
        )
        .load();
    let proxy = common::start_proxy(cfg).await;
    let today = Date::of(std::time::SystemTime::now());
    let left = catalog::find("virtualserver", "1.1")
        .unwrap()
        .days_left(today)
        .unwrap();
    let metrics = proxy.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "scp_auth_proxy_api_version_days_left{{service=\"virtualserver\",operation=\"POST /v1/images/*/import\"}} {left}\n"
        )),
        "{metrics}"
    );
    let days: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("scp_auth_proxy_api_version_days_left{"))
        .collect();
    // 1.3 has no announced end, security groups no dates: only the import pin has a value.
    assert_eq!(days.len(), 1, "{metrics}");
}

#[tokio::test]
async fn live_version_list_is_read_and_compared() {
    use scp_auth_proxy::{monitor, policy::lifecycle};
    let emu = emulator().await;
    let (cfg, _dir) = config(&emu.base_url(), "1.3").load();
    let svc = cfg.service("virtualserver").unwrap();
    let live = monitor::fetch_live(
        svc,
        &scp_auth_proxy::forward::Egress::direct(),
        monitor::LIVE_TIMEOUT,
    )
    .await
    .expect("the emulator lists its versions");
    assert!(live.iter().any(|v| v.id == "v1.3"), "{live:?}");
    // The emulator serves the same catalog: nothing to warn about.
    assert_eq!(lifecycle::compare_live(svc.pin(), &live), vec![]);
    // An upstream that does not answer in time is reported, not waited on.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (cfg, _dir2) = config(&format!("http://{}", silent.local_addr().unwrap()), "1.3").load();
    let started = std::time::Instant::now();
    let err = monitor::fetch_live(
        cfg.service("virtualserver").unwrap(),
        &scp_auth_proxy::forward::Egress::direct(),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    assert!(err.contains("longer than"), "{err}");
}

// ---------------------------------------------------------------- through the emulator

async fn emulator() -> scp_auth_proxy::emulator::EmulatorHandle {
    use scp_auth_proxy::emulator::{self, EmulatorOptions, SecretSource};
    let mut o = EmulatorOptions::new(
        common::ACCESS_KEY,
        SecretSource::memory(SECRET.as_bytes().to_vec()),
    );
    o.account_id = ACCT.into();
    o.import_delay = Duration::from_millis(100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    emulator::spawn(listener, o).await.expect("emulator starts")
}

#[tokio::test]
async fn through_the_emulator_import_is_accepted_and_bad_urls_are_refused_by_the_proxy() {
    use scp_auth_proxy::emulator::images::DEMO_IMAGE_ID;
    let emu = emulator().await;
    let (cfg, _dir) = config(&emu.base_url(), "1.3").load();
    let proxy = common::start_proxy(cfg).await;
    let c = client();
    let path = format!("/v1/images/{DEMO_IMAGE_ID}/import");

    // Refused by the proxy (its own JSON shape, not SCP's {"errors": [...]}).
    for (url, code) in [
        (
            good_url().replace("kr-west1", "kr-east1"),
            "url_wrong_region",
        ),
        (good_url().replace(ACCT, OTHER), "url_wrong_account"),
        (good_url().replace(".qcow2", ".QCOW2"), "url_not_qcow2"),
    ] {
        let (status, _, b) = send(
            &c,
            post(proxy.addr, &path, json!({ "url": url }).to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{b:?}");
        assert_eq!(error_code(&b), code);
    }
    // The image is untouched by those: still importable.
    let (status, _, b) = send(
        &c,
        post(proxy.addr, &path, json!({ "url": good_url() }).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{b:?}");
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{}/v1/images/{DEMO_IMAGE_ID}", proxy.addr))
        .body(body(Bytes::new()))
        .unwrap();
    let (status, _, b) = send(&c, req).await;
    assert_eq!(status, StatusCode::OK);
    let shown: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(shown["url"], good_url());
}
