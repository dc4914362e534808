//! The built-in SCP emulator: what it accepts and rejects from the real proxy, every image
//! operation end to end through the proxy, `--profile dev`, and the standalone `emulator`
//! subcommand with SIGHUP rotation. Everything runs on 127.0.0.1; time-based checks poll with a
//! deadline instead of sleeping.

mod common;

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use common::TestConfig;
use scp_auth_proxy::credentials::{CredentialStore, Credentials};
use scp_auth_proxy::emulator::images::DEMO_IMAGE_ID;
use scp_auth_proxy::emulator::{self, EmulatorHandle, EmulatorOptions, SecretSource};
use scp_auth_proxy::layers::sign::sign_request;
use scp_auth_proxy::Running;

const AK: &str = "emu-test-access-key";
const SECRET: &str = "emu-test-secret-Ω-0001";
const ACCOUNT: &str = "f39c460fade34fecb05ede8f904b24b7";
const CLIENT_TYPE: &str = "Openapi";

fn good_url(key: &str) -> String {
    format!("https://object-store.kr-west1.e.samsungsdscloud.com/{ACCOUNT}:demo-bucket/{key}.qcow2")
}

// ---------------------------------------------------------------- helpers

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first SCP error: `errors[0]`.
    fn scp_error(&self) -> Value {
        let v = self.json();
        let err = v["errors"][0].clone();
        for field in ["code", "title", "detail", "status", "request_id"] {
            assert!(!err[field].is_null(), "no {field} in {v}");
        }
        assert_eq!(err["status"], self.status.as_u16(), "{v}");
        err
    }
}

async fn send(req: Request<common::Body>) -> Reply {
    let (status, headers, body) = common::send(&common::client(), req).await;
    Reply {
        status,
        headers,
        body,
    }
}

fn request(method: Method, url: &str, body: Option<Value>) -> Request<common::Body> {
    let mut b = Request::builder().method(method).uri(url);
    let bytes = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    b.body(common::body(bytes)).expect("request builds")
}

/// A request to the proxy.
async fn call(proxy: &Running, method: Method, path: &str, body: Option<Value>) -> Reply {
    send(request(
        method,
        &format!("http://{}{path}", proxy.addr),
        body,
    ))
    .await
}

fn options() -> EmulatorOptions {
    let mut o = EmulatorOptions::new(AK, SecretSource::memory(SECRET.as_bytes().to_vec()));
    o.account_id = ACCOUNT.into();
    o.import_delay = Duration::from_millis(200);
    o
}

async fn emulator_with(opts: EmulatorOptions) -> EmulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    emulator::spawn(listener, opts)
        .await
        .expect("emulator starts")
}

async fn emulator() -> EmulatorHandle {
    emulator_with(options()).await
}

/// The test config with no upstream and no access key: the emulator provides both.
fn dev_config() -> TestConfig {
    TestConfig::new("")
        .remove("virtualserver", "upstream")
        .remove("credentials", "access_key")
}

/// The real proxy in front of `emu`, pinning virtualserver to `pin`, signing with the given
/// key pair and account.
async fn proxy_with(
    emu: &EmulatorHandle,
    pin: &str,
    access_key: &str,
    secret: &str,
    account_id: &str,
) -> Running {
    let base = emu.base_url();
    let (cfg, _dir) = TestConfig::new(&base)
        .credentials(&format!(
            "access_key = \"{access_key}\"\naccount_id = \"{account_id}\""
        ))
        .service(&format!("api_version = \"{pin}\""))
        .service("allow_unsupported_version = true")
        .add_service("iam", &base, "1.0")
        .service("allow_unsupported_version = true")
        .load();
    let creds = Credentials::from_parts(
        access_key,
        secret.as_bytes(),
        account_id,
        CLIENT_TYPE,
        "test",
    )
    .unwrap();
    scp_auth_proxy::start(cfg, creds)
        .await
        .expect("proxy starts")
}

async fn proxy(emu: &EmulatorHandle) -> Running {
    proxy_with(emu, "1.3", AK, SECRET, ACCOUNT).await
}

/// A request to `emu` signed by the proxy's own signing function at `now`, before anything
/// else touches it.
fn signed(
    emu: &EmulatorHandle,
    method: Method,
    target: &str,
    body: Option<Value>,
    secret: &str,
    now: SystemTime,
) -> Request<common::Body> {
    let mut req = request(method, &format!("{}{target}", emu.base_url()), body);
    let store = CredentialStore::new(
        Credentials::from_parts(AK, secret.as_bytes(), ACCOUNT, CLIENT_TYPE, "test").unwrap(),
    );
    sign_request(&mut req, &store, now);
    req
}

/// Polls `GET path` through the proxy until the image has `status`, for at most 10 seconds.
async fn wait_for_status(proxy: &Running, path: &str, status: &str) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let found = common::poll_until(Duration::from_secs(10), || async {
        let r = call(proxy, Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        let done = v["status"] == status;
        *last.borrow_mut() = v.clone();
        done.then_some(v)
    })
    .await;
    found.unwrap_or_else(|| panic!("image never became {status}: {}", last.borrow()))
}

// ---------------------------------------------------------------- what is accepted

#[tokio::test]
async fn accepts_what_the_proxy_signs() {
    let emu = emulator().await;
    let proxy = proxy(&emu).await;
    let r = call(&proxy, Method::GET, "/v1/images", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["images"][0]["id"], DEMO_IMAGE_ID);
    // A raw query is signed and verified byte for byte.
    let r = call(&proxy, Method::GET, "/v1/images?limit=1&x=a%20b%2Fc", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // An empty query ("?" alone) is part of the URL on both sides.
    let r = call(&proxy, Method::GET, "/v1/images?", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // A percent-encoded path segment reaches the resource layer (404: no such image).
    let r = call(&proxy, Method::GET, "/v1/images/abc%2Fdef", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.scp_error()["code"], "Image.NotFound");
    // Without an account id the proxy sends no Scp-AccountId; the emulator reads "".
    let mut o = options();
    o.account_id = String::new();
    let emu2 = emulator_with(o).await;
    let proxy2 = proxy_with(&emu2, "1.3", AK, SECRET, "").await;
    let r = call(&proxy2, Method::GET, "/v1/images", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

// ---------------------------------------------------------------- what is rejected

#[tokio::test]
async fn wrong_secret_is_401_showing_the_string_to_sign_never_a_secret() {
    let emu = emulator().await;
    let proxy = proxy_with(&emu, "1.3", AK, "not-the-secret", ACCOUNT).await;
    let r = call(&proxy, Method::GET, "/v1/images?limit=2", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let err = r.scp_error();
    assert_eq!(err["code"], "Authentication.SignatureMismatch");
    let detail = err["detail"].as_str().unwrap();
    let url = format!("GET{}/v1/images?limit=2", emu.base_url());
    assert!(detail.contains(&url), "{detail}");
    assert!(
        detail.contains(&format!("{AK}{ACCOUNT}{CLIENT_TYPE}")),
        "{detail}"
    );
    for secret in [SECRET, "not-the-secret"] {
        assert!(!r.text().contains(secret), "{}", r.text());
    }
}

fn twenty_minutes_ahead() -> SystemTime {
    SystemTime::now() + Duration::from_secs(20 * 60)
}

fn twenty_minutes_behind() -> SystemTime {
    SystemTime::now() - Duration::from_secs(20 * 60)
}

fn fourteen_minutes_ahead() -> SystemTime {
    SystemTime::now() + Duration::from_secs(14 * 60)
}

#[tokio::test]
async fn stale_timestamp_is_401() {
    for (clock, side) in [
        (twenty_minutes_ahead as fn() -> SystemTime, "behind"),
        (twenty_minutes_behind, "ahead of"),
    ] {
        let mut o = options();
        o.clock = clock;
        let emu = emulator_with(o).await;
        let proxy = proxy(&emu).await;
        let r = call(&proxy, Method::GET, "/v1/images", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        let err = r.scp_error();
        assert_eq!(err["code"], "Authentication.TimestampOutOfWindow");
        let detail = err["detail"].as_str().unwrap();
        assert!(detail.contains(side) && detail.contains("15m"), "{detail}");
    }
    // Inside the window is fine.
    let mut o = options();
    o.clock = fourteen_minutes_ahead;
    let emu = emulator_with(o).await;
    let proxy = proxy(&emu).await;
    let r = call(&proxy, Method::GET, "/v1/images", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn url_changed_after_signing_is_401() {
    let emu = emulator().await;
    let now = SystemTime::now();
    // Signed and sent as is: authenticated (the image does not exist: 404).
    let req = signed(&emu, Method::GET, "/v1/images/abc%2Fdef", None, SECRET, now);
    let r = send(req).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // The same signed request with %2F re-escaped to %252F on the way.
    let mut req = signed(&emu, Method::GET, "/v1/images/abc%2Fdef", None, SECRET, now);
    *req.uri_mut() = format!("{}/v1/images/abc%252Fdef", emu.base_url())
        .parse()
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let err = r.scp_error();
    assert_eq!(err["code"], "Authentication.SignatureMismatch");
    assert!(
        err["detail"]
            .as_str()
            .unwrap()
            .contains("/v1/images/abc%252Fdef"),
        "{err}"
    );
    // A query added after signing.
    let mut req = signed(&emu, Method::GET, "/v1/images", None, SECRET, now);
    *req.uri_mut() = format!("{}/v1/images?limit=1", emu.base_url())
        .parse()
        .unwrap();
    assert_eq!(send(req).await.status, StatusCode::UNAUTHORIZED);
    // The method changed after signing.
    let mut req = signed(&emu, Method::GET, "/v1/images/x", None, SECRET, now);
    *req.method_mut() = Method::DELETE;
    assert_eq!(send(req).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_access_key_is_401() {
    let emu = emulator().await;
    let proxy = proxy_with(&emu, "1.3", "someone-elses-key", SECRET, ACCOUNT).await;
    let r = call(&proxy, Method::GET, "/v1/images", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let err = r.scp_error();
    assert_eq!(err["code"], "Authentication.UnknownAccessKey");
    assert!(err["detail"]
        .as_str()
        .unwrap()
        .contains("someone-elses-key"));
}

#[tokio::test]
async fn other_account_is_401() {
    let emu = emulator().await;
    for account in ["another-account", ""] {
        let proxy = proxy_with(&emu, "1.3", AK, SECRET, account).await;
        let r = call(&proxy, Method::GET, "/v1/images", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert_eq!(r.scp_error()["code"], "Authentication.AccountMismatch");
    }
}

#[tokio::test]
async fn missing_headers_are_401() {
    let emu = emulator().await;
    for header in [
        "scp-accesskey",
        "scp-timestamp",
        "scp-signature",
        "scp-clienttype",
    ] {
        let mut req = signed(
            &emu,
            Method::GET,
            "/v1/images",
            None,
            SECRET,
            SystemTime::now(),
        );
        req.headers_mut().remove(header);
        let r = send(req).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{header}: {}", r.text());
        let err = r.scp_error();
        assert_eq!(err["code"], "Authentication.MissingHeader");
        let detail = err["detail"].as_str().unwrap().to_ascii_lowercase();
        assert!(detail.contains(header), "{detail}");
    }
    // Entirely unsigned: 401 naming all four (the real gateway answers a bare 404).
    let r = send(request(
        Method::GET,
        &format!("{}/v1/images", emu.base_url()),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let err = r.scp_error();
    for name in [
        "Scp-Accesskey",
        "Scp-Timestamp",
        "Scp-Signature",
        "Scp-ClientType",
    ] {
        assert!(err["detail"].as_str().unwrap().contains(name), "{err}");
    }
    // Unsigned and unknown path: still 401 (authentication comes first).
    let r = send(request(
        Method::GET,
        &format!("{}/v1/servers", emu.base_url()),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

fn may_31_2026_noon() -> SystemTime {
    // 2026-05-31T12:00:00Z: virtualserver 1.1's last day.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_228_800)
}

fn june_1_2026_noon() -> SystemTime {
    may_31_2026_noon() + Duration::from_secs(86_400)
}

#[tokio::test]
async fn bad_api_version_is_406() {
    // Through the proxy: a pin the emulator does not know, and one past its date.
    let emu = emulator().await;
    for pin in ["9.9", "1.0"] {
        let proxy = proxy_with(&emu, pin, AK, SECRET, ACCOUNT).await;
        let r = call(&proxy, Method::GET, "/v1/images", None).await;
        assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE, "{pin}: {}", r.text());
        let err = r.scp_error();
        assert_eq!(err["code"], "ApiVersion.NotAcceptable");
        assert!(
            err["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("virtualserver {pin}")),
            "{err}"
        );
    }

    // Directly, on fixed dates: the last day is still served, the day after is not.
    let version = |req: &mut Request<common::Body>, v: &'static str| {
        req.headers_mut()
            .insert("scp-api-version", http::HeaderValue::from_static(v));
    };
    for (clock, v, want) in [
        (
            may_31_2026_noon as fn() -> SystemTime,
            "virtualserver 1.1",
            StatusCode::OK,
        ),
        (
            june_1_2026_noon,
            "virtualserver 1.1",
            StatusCode::NOT_ACCEPTABLE,
        ),
        (june_1_2026_noon, "virtualserver 1.2", StatusCode::OK),
        (june_1_2026_noon, "virtualserver 1.3", StatusCode::OK),
        (june_1_2026_noon, "vpc 1.3", StatusCode::NOT_ACCEPTABLE),
        (
            june_1_2026_noon,
            "virtualserver v1.3",
            StatusCode::NOT_ACCEPTABLE,
        ),
    ] {
        let mut o = options();
        o.clock = clock;
        let emu = emulator_with(o).await;
        let mut req = signed(&emu, Method::GET, "/v1/images", None, SECRET, clock());
        version(&mut req, v);
        let r = send(req).await;
        assert_eq!(r.status, want, "{v}: {}", r.text());
        if want == StatusCode::NOT_ACCEPTABLE {
            assert_eq!(r.scp_error()["code"], "ApiVersion.NotAcceptable");
        }
    }
    // No header: served as CURRENT.
    let emu = emulator().await;
    let req = signed(
        &emu,
        Method::GET,
        "/v1/images",
        None,
        SECRET,
        SystemTime::now(),
    );
    assert!(req.headers().get("scp-api-version").is_none());
    assert_eq!(send(req).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------- versions and endpoints

#[tokio::test]
async fn version_list_is_unsigned_and_endpoint_catalog_is_signed() {
    let emu = emulator().await;
    let r = send(request(Method::GET, &format!("{}/", emu.base_url()), None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let versions = v["versions"].as_array().unwrap();
    let got: Vec<(String, String, Value)> = versions
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["status"].as_str().unwrap().to_owned(),
                v["not_before"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("v1.3".into(), "CURRENT".into(), Value::Null),
            ("v1.2".into(), "SUPPORTED".into(), json!("2026-08-31")),
            ("v1.1".into(), "DEPRECATED".into(), json!("2026-05-31")),
            ("v1.0".into(), "DEPRECATED".into(), json!("2025-12-31")),
        ]
    );
    assert!(versions[0]["links"].is_array());

    let r = send(request(
        Method::GET,
        &format!("{}/v1/endpoints", emu.base_url()),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Signed, straight from the emulator: itself for what it emulates, SCP for the rest.
    let direct = send(signed(
        &emu,
        Method::GET,
        "/v1/endpoints",
        None,
        SECRET,
        SystemTime::now(),
    ))
    .await;
    assert_eq!(direct.status, StatusCode::OK, "{}", direct.text());
    let v = direct.json();
    let endpoints = v["endpoints"].as_array().unwrap();
    let vs = endpoints
        .iter()
        .find(|e| e["service_name"] == "virtualserver")
        .expect("virtualserver listed");
    assert_eq!(vs["url"], emu.base_url());
    assert_eq!(vs["service_type"], "scp-virtualserver");
    assert_eq!(vs["region"], "kr-west1");
    assert!(endpoints.iter().any(|e| e["service_name"] == "iam"));
    let vpc = endpoints
        .iter()
        .find(|e| e["service_name"] == "vpc")
        .unwrap();
    assert_eq!(vpc["url"], "https://vpc.kr-west1.e.samsungsdscloud.com");

    let proxy = proxy(&emu).await;
    // The endpoint catalog belongs to iam: a virtualserver version there is another service's.
    let r = call(&proxy, Method::GET, "/v1/endpoints", None).await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE, "{}", r.text());
}

/// The proxy in front of `emu` (virtualserver and iam), with `routing` lines added.
async fn proxy_routing(emu: &EmulatorHandle, routing: &str) -> Running {
    let base = emu.base_url();
    let (cfg, _dir) = TestConfig::new(&base)
        .credentials(&format!(
            "access_key = \"{AK}\"\naccount_id = \"{ACCOUNT}\""
        ))
        .routing(routing)
        .add_service("iam", &base, "1.4")
        .load();
    let creds =
        Credentials::from_parts(AK, SECRET.as_bytes(), ACCOUNT, CLIENT_TYPE, "test").unwrap();
    scp_auth_proxy::start(cfg, creds)
        .await
        .expect("proxy starts")
}

/// Through the real listener: the catalog's URLs for virtualserver and iam point at the
/// proxy's prefixes (the port bound, not the configured 0), vpc and dns stay and are named,
/// and a client that follows the catalog gets its answer through the proxy, signed.
#[tokio::test]
async fn the_endpoint_catalog_keeps_clients_on_the_proxy() {
    let emu = emulator().await;
    let proxy = proxy_routing(&emu, "").await;
    let r = call(&proxy, Method::GET, "/iam/v1/endpoints", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["scp-proxy-unrouted"], "vpc,dns");
    assert_eq!(r.headers["content-length"], r.body.len().to_string());
    let v = r.json();
    let url_of = |name: &str| {
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["service_name"] == name)
            .and_then(|e| e["url"].as_str())
            .unwrap_or_else(|| panic!("{name} not in {v}"))
            .to_owned()
    };
    let at = format!("http://{}", proxy.addr);
    assert_eq!(url_of("virtualserver"), format!("{at}/virtualserver"));
    assert_eq!(url_of("iam"), format!("{at}/iam"));
    assert_eq!(url_of("vpc"), "https://vpc.kr-west1.e.samsungsdscloud.com");
    assert_eq!(url_of("dns"), "https://dns.kr-west1.e.samsungsdscloud.com");
    // Every other byte is the emulator's: the rewritten body is its body with the URLs swapped.
    let direct = send(signed(
        &emu,
        Method::GET,
        "/v1/endpoints",
        None,
        SECRET,
        SystemTime::now(),
    ))
    .await;
    let quoted = |u: &str| format!("\"{u}\"");
    let want = direct.text().replacen(
        &quoted(&emu.base_url()),
        &quoted(&url_of("virtualserver")),
        1,
    );
    let want = want.replacen(&quoted(&emu.base_url()), &quoted(&url_of("iam")), 1);
    assert_eq!(r.text(), want);

    // Follow it: the SDK-style client calls the URL it was given.
    let r = send(request(
        Method::GET,
        &format!("{}/v1/images/{DEMO_IMAGE_ID}", url_of("virtualserver")),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["id"], DEMO_IMAGE_ID);
}

/// `routing.rewrite_endpoint_catalog = false`: the catalog passes byte for byte, so its URLs
/// are the emulator's own.
#[tokio::test]
async fn with_the_rewrite_off_the_catalog_passes_as_it_is() {
    let emu = emulator().await;
    let proxy = proxy_routing(&emu, "rewrite_endpoint_catalog = false").await;
    let r = call(&proxy, Method::GET, "/iam/v1/endpoints", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.headers.get("scp-proxy-unrouted").is_none());
    let direct = send(signed(
        &emu,
        Method::GET,
        "/v1/endpoints",
        None,
        SECRET,
        SystemTime::now(),
    ))
    .await;
    assert_eq!(r.body, direct.body);
    assert!(r
        .text()
        .contains(&format!("\"url\":\"{}\"", emu.base_url())));
}

/// curl with a deadline, no proxy from the environment; `-x FORWARD --cacert CA` when given.
/// Returns (stdout, success).
fn curl(forward: Option<(std::net::SocketAddr, &std::path::Path)>, url: &str) -> (String, bool) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"]);
    if let Some((fwd, ca)) = forward {
        cmd.arg("-x")
            .arg(format!("http://{fwd}"))
            .arg("--cacert")
            .arg(ca);
    }
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.arg(url).output().expect("curl runs (install curl)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// curl's body and status (`-w '\n%{http_code}'`), the body parsed as JSON.
fn curl_json(
    forward: Option<(std::net::SocketAddr, &std::path::Path)>,
    url: &str,
) -> (Value, String) {
    let (out, ok) = curl(forward, url);
    assert!(ok, "curl {url}: {out}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (
        serde_json::from_str(body).unwrap_or(Value::Null),
        status.to_owned(),
    )
}

fn urls(v: &Value) -> Vec<(String, String)> {
    v["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints in {v}"))
        .iter()
        .map(|e| {
            (
                e["service_name"].as_str().unwrap().to_owned(),
                e["url"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The real binary with both data-plane listeners in front of the standalone emulator: a
/// client on the plain listener gets loopback prefixes (the port bound, and still after a
/// SIGHUP reload); a client through the forward proxy (`HTTPS_PROXY`) gets the services'
/// intercepted public names, never `http://127.0.0.1`, and following one stays in the tunnel.
#[test]
fn the_catalog_names_what_each_listener_reaches() {
    const VS_HOST: &str = "virtualserver.kr-west1.e.samsungsdscloud.com";
    const IAM_HOST: &str = "iam.e.samsungsdscloud.com";
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let secret_arg = secret.to_str().unwrap();
    let emu = common::Proc::emulator(&[
        "--listen",
        "127.0.0.1:0",
        "--access-key",
        AK,
        "--secret-key-file",
        secret_arg,
        "--account-id",
        ACCOUNT,
    ]);
    let ca = dir.path().join("ca.pem");
    let emu_base = format!("http://{}", emu.addr);
    let cfg = TestConfig::new(&emu_base)
        .server("check_live_versions = false")
        .secret_file(&secret)
        .credentials(&format!(
            "access_key = \"{AK}\"\naccount_id = \"{ACCOUNT}\"\nwatch_interval = \"0s\""
        ))
        .service(&format!("intercept = [\"{VS_HOST}:443\"]"))
        .add_service("iam", &emu_base, "1.4")
        .service(&format!("intercept = [\"{IAM_HOST}:443\"]"))
        .raw(&format!(
            "[forward_proxy]\nlisten = \"127.0.0.1:0\"\nca_cert_out = \"{}\"",
            ca.display()
        ))
        .write(dir.path().join("proxy.toml"));
    let p = common::Proc::start(&["--config", &cfg], &[]);
    let fwd = p.forward_addr.expect("forward listener");
    let emu_url = format!("http://{}", emu.addr);
    let unrouted = [
        (
            "vpc".to_owned(),
            "https://vpc.kr-west1.e.samsungsdscloud.com".to_owned(),
        ),
        (
            "dns".to_owned(),
            "https://dns.kr-west1.e.samsungsdscloud.com".to_owned(),
        ),
    ];

    // Through the forward proxy: the public names it intercepts.
    let (v, status) = curl_json(
        Some((fwd, &ca)),
        &format!("https://{IAM_HOST}/v1/endpoints"),
    );
    assert_eq!(status, "200", "{v}\n{}", p.log());
    let got = urls(&v);
    assert_eq!(
        got[..2],
        [
            ("virtualserver".to_owned(), format!("https://{VS_HOST}")),
            ("iam".to_owned(), format!("https://{IAM_HOST}")),
        ],
        "{v}"
    );
    assert_eq!(got[2..], unrouted);
    assert!(!v.to_string().contains("127.0.0.1"), "{v}");
    // Following it stays in the tunnel, signed there.
    let (img, status) = curl_json(
        Some((fwd, &ca)),
        &format!("{}/v1/images/{DEMO_IMAGE_ID}", got[0].1),
    );
    assert_eq!(
        (status.as_str(), &img["id"]),
        ("200", &json!(DEMO_IMAGE_ID)),
        "{img}"
    );

    // On the plain listener: loopback prefixes at the port bound (configured 0).
    let plain = |p: &common::Proc| {
        let (v, status) = curl_json(None, &format!("http://{}/iam/v1/endpoints", p.addr));
        assert_eq!(status, "200", "{v}");
        urls(&v)
    };
    let want = [
        (
            "virtualserver".to_owned(),
            format!("http://{}/virtualserver", p.addr),
        ),
        ("iam".to_owned(), format!("http://{}/iam", p.addr)),
    ];
    let got = plain(&p);
    assert_eq!(got[..2], want);
    assert_eq!(got[2..], unrouted);
    assert!(!got.iter().any(|(_, u)| u.starts_with(&emu_url)), "{got:?}");

    // A reload builds a new stack from the configured `listen` (port 0); the catalog must
    // still name the bound one.
    p.signal("HUP");
    assert!(
        common::poll_until_blocking(Duration::from_secs(10), || p
            .log()
            .contains("configuration and key pair reloaded")
            .then_some(()))
        .is_some(),
        "no reload: {}",
        p.log()
    );
    let got = plain(&p);
    assert_eq!(got[..2], want, "after reload");
}

// ---------------------------------------------------------------- images through the proxy

#[tokio::test]
async fn every_image_operation_end_to_end_through_the_proxy() {
    let emu = emulator().await;
    let proxy = proxy(&emu).await;

    // Create: 201 with the new image, queued.
    let created = call(
        &proxy,
        Method::POST,
        "/v1/images",
        Some(json!({"name": "app-base", "os_distro": "rocky", "url": good_url("app-base")})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let img = created.json();
    let id = img["id"].as_str().unwrap().to_owned();
    assert_eq!(img["status"], "queued");
    assert_eq!(img["name"], "app-base");
    assert_eq!(img["owner"], ACCOUNT);
    assert_ne!(id, DEMO_IMAGE_ID);
    let r = call(
        &proxy,
        Method::POST,
        "/v1/images",
        Some(json!({"name": "no-url", "os_distro": "rocky"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // List, with limit and marker.
    let r = call(&proxy, Method::GET, "/v1/images", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: Vec<_> = r.json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [DEMO_IMAGE_ID.to_owned(), id.clone()]);
    let r = call(&proxy, Method::GET, "/v1/images?limit=1", None).await;
    assert_eq!(r.json()["images"].as_array().unwrap().len(), 1);
    let r = call(
        &proxy,
        Method::GET,
        &format!("/v1/images?limit=1&marker={DEMO_IMAGE_ID}"),
        None,
    )
    .await;
    assert_eq!(r.json()["images"][0]["id"], id.as_str());
    let r = call(&proxy, Method::GET, "/v1/images?marker=nope", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Show; unknown id 404.
    let r = call(&proxy, Method::GET, &format!("/v1/images/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["id"], id.as_str());
    let r = call(&proxy, Method::GET, "/v1/images/no-such-image", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.scp_error()["code"], "Image.NotFound");

    // Import: 202 with no body, then importing -> active; 409 while importing and after.
    let import = |id: &str| format!("/v1/images/{id}/import");
    let url = good_url("ubuntu-22.04");
    let r = call(
        &proxy,
        Method::POST,
        &import(DEMO_IMAGE_ID),
        Some(json!({"url": url})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert!(r.body.is_empty());
    let show = format!("/v1/images/{DEMO_IMAGE_ID}");
    let r = call(&proxy, Method::GET, &show, None).await;
    assert_eq!(r.json()["status"], "importing");
    assert_eq!(r.json()["url"], url.as_str());
    let r = call(
        &proxy,
        Method::POST,
        &import(DEMO_IMAGE_ID),
        Some(json!({"url": url})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.scp_error()["code"], "Image.InvalidState");
    wait_for_status(&proxy, &show, "active").await;
    let r = call(
        &proxy,
        Method::POST,
        &import(DEMO_IMAGE_ID),
        Some(json!({"url": url})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    // Unknown id: 404.
    let r = call(
        &proxy,
        Method::POST,
        &import("no-such-image"),
        Some(json!({"url": url})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // A bad URL is refused (by the proxy's own policy or by the emulator: 400 either way).
    for bad in [
        json!({"url": good_url("x").replace(".qcow2", ".img")}),
        json!({"url": format!("{}?sig=1", good_url("x"))}),
        json!({}),
    ] {
        let r = call(&proxy, Method::POST, &import(&id), Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
    }
    // The created image imports too.
    let r = call(
        &proxy,
        Method::POST,
        &import(&id),
        Some(json!({"url": good_url("b")})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());

    // Delete: 204, then 404.
    let r = call(&proxy, Method::DELETE, &format!("/v1/images/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let r = call(&proxy, Method::DELETE, &format!("/v1/images/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&proxy, Method::GET, &format!("/v1/images/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn emulator_enforces_import_url_rules_itself() {
    // Signed directly, so the proxy's own URL policy cannot answer first.
    let emu = emulator().await;
    let post = |url: Value| {
        signed(
            &emu,
            Method::POST,
            &format!("/v1/images/{DEMO_IMAGE_ID}/import"),
            Some(json!({ "url": url })),
            SECRET,
            SystemTime::now(),
        )
    };
    for bad in [
        json!("https://h/x.img"),
        json!("https://h/x.qcow2?x"),
        json!("https://h/x.QCOW2"),
        json!(format!("https://h/{}.qcow2", "a".repeat(250))),
        json!(null),
        json!(12),
    ] {
        let r = send(post(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        r.scp_error();
    }
    let mut req = post(json!("x"));
    *req.body_mut() = common::body(Bytes::from_static(b"{not json"));
    // The body is not signed, so changing it keeps the signature valid.
    let r = send(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.scp_error()["code"], "Request.InvalidBody");
    let r = send(post(json!("https://h/x.qcow2"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

// ---------------------------------------------------------------- key reload

#[tokio::test]
async fn reload_rereads_the_key_file_and_keeps_the_old_key_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "first-secret\n").unwrap();
    let mut o = options();
    o.secret = SecretSource::File(file.clone());
    let emu = emulator_with(o).await;
    let status = |secret: &'static str| {
        let req = signed(
            &emu,
            Method::GET,
            "/v1/images",
            None,
            secret,
            SystemTime::now(),
        );
        async move { send(req).await.status }
    };
    assert_eq!(status("first-secret").await, StatusCode::OK);
    std::fs::write(&file, "second-secret\n").unwrap();
    // Not re-read until asked.
    assert_eq!(status("first-secret").await, StatusCode::OK);
    emu.reload().expect("reload");
    assert_eq!(status("first-secret").await, StatusCode::UNAUTHORIZED);
    assert_eq!(status("second-secret").await, StatusCode::OK);
    // A broken file is refused and the running key stays.
    std::fs::write(&file, "\n").unwrap();
    let err = emu.reload().unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert_eq!(status("second-secret").await, StatusCode::OK);

    // A missing file fails at start, naming it.
    let mut o = options();
    o.secret = SecretSource::File(dir.path().join("nope"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = emulator::spawn(listener, o).await.unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let emu = emulator().await;
    let addr = emu.addr();
    emu.shutdown();
    assert!(emu.wait().await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------- --profile dev

#[tokio::test]
async fn dev_profile_runs_the_whole_product_with_no_secret() {
    let (cfg, _dir) = dev_config()
        .credentials("account_id = \"dev-account\"")
        .credentials("secret_key_file = \"/nonexistent/never-read\"")
        .raw("[emulator]\nin_process = true\nimport_delay = \"200ms\"")
        .load();
    let (proxy, emu) = scp_auth_proxy::cmd::dev::start_dev(cfg)
        .await
        .expect("dev starts");
    assert!(emu.addr().ip().is_loopback());
    // The README's quick start, through the proxy.
    let url = "https://object-store.kr-west1.e.samsungsdscloud.com/dev-account:demo-bucket/images/ubuntu-22.04.qcow2";
    let import = format!("/v1/images/{DEMO_IMAGE_ID}/import");
    let r = call(&proxy, Method::POST, &import, Some(json!({ "url": url }))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let show = format!("/v1/images/{DEMO_IMAGE_ID}");
    wait_for_status(&proxy, &show, "active").await;
    let r = call(&proxy, Method::POST, &import, Some(json!({ "url": url }))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let r = call(
        &proxy,
        Method::POST,
        &import,
        Some(json!({ "url": "https://object-store.kr-west1.e.samsungsdscloud.com/dev-account:demo-bucket/images/ubuntu.img" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // The emulator itself still refuses anything unsigned.
    let r = send(request(
        Method::GET,
        &format!("{}/v1/images", emu.base_url()),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    proxy.shutdown();
    emu.shutdown();

    // The throwaway-key emulator never listens beyond loopback.
    let (cfg, _dir) = dev_config()
        .remove("virtualserver", "region")
        .raw("[emulator]\nin_process = true\nlisten = \"0.0.0.0:0\"")
        .load();
    let Err(err) = scp_auth_proxy::cmd::dev::start_dev(cfg).await else {
        panic!("dev started on 0.0.0.0");
    };
    let err = err.to_string();
    assert!(
        err.contains("emulator.listen") && err.contains("loopback"),
        "{err}"
    );
}

// ---------------------------------------------------------------- the binary

const BIN: &str = env!("CARGO_BIN_EXE_scp-auth-proxy");

/// A child process ended (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    /// stderr (the log), line by line.
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    /// stdout, line by line.
    out: std::sync::mpsc::Receiver<String>,
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("SCP_SECRET_KEY")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let lines = lines_of(child.stderr.take().unwrap());
        let out = lines_of(child.stdout.take().unwrap());
        Self {
            child,
            lines,
            seen: Vec::new(),
            out,
        }
    }

    /// stdout lines up to and including the first that starts with `last`, within 20 s.
    fn stdout_until(&self, last: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .out
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no stdout line {last:?}; got:\n{}", got.join("\n")));
            got.push(line.clone());
            if line.starts_with(last) {
                return got;
            }
        }
    }

    /// The first JSON log line whose message contains `message`.
    fn wait_log(&mut self, message: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no log line with {message:?}; saw:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"].as_str().is_some_and(|m| m.contains(message)) {
                    return v;
                }
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM, then the exit status within 10 s; the rest of stderr is kept in `seen`.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.try_iter());
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn standalone_emulator_rereads_its_key_file_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "sentinel-first-SECRET\n").unwrap();
    let mut p = Proc::spawn(&[
        "--log-format",
        "json",
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--secret-key-file",
        file.to_str().unwrap(),
        "--import-delay",
        "100ms",
    ]);
    let started = p.wait_log("SCP emulator listening");
    let base = started["url"].as_str().expect("url logged").to_owned();
    assert_eq!(started["access_key"], emulator::DEFAULT_ACCESS_KEY);
    let status = |secret: &str| {
        let mut req = request(Method::GET, &format!("{base}/v1/images"), None);
        let store = CredentialStore::new(
            Credentials::from_parts(
                emulator::DEFAULT_ACCESS_KEY,
                secret.as_bytes(),
                "",
                CLIENT_TYPE,
                "test",
            )
            .unwrap(),
        );
        sign_request(&mut req, &store, SystemTime::now());
        async move { send(req).await.status }
    };
    assert_eq!(status("sentinel-first-SECRET").await, StatusCode::OK);
    std::fs::write(&file, "sentinel-second-SECRET\n").unwrap();
    p.signal("HUP");
    let rotated = common::eventually(Duration::from_secs(10), || async {
        status("sentinel-second-SECRET").await == StatusCode::OK
    })
    .await;
    assert!(rotated, "SIGHUP did not rotate the key");
    assert_eq!(
        status("sentinel-first-SECRET").await,
        StatusCode::UNAUTHORIZED
    );
    assert!(p.terminate().success());
    let log = p.seen.join("\n");
    assert!(!log.contains("SECRET"), "a secret reached the log:\n{log}");
}

/// `scp-auth-proxy emulator` with no key: throwaway credentials printed once on stdout as
/// KEY=value lines, never in the log; a proxy binary configured from those lines alone (plus a
/// config naming the service) gets 200, and path ids are percent-decoded as SCP does.
#[tokio::test]
async fn standalone_emulator_without_a_key_prints_credentials_a_proxy_can_use() {
    let mut emu = Proc::spawn(&[
        "--log-format",
        "json",
        "emulator",
        "--listen",
        "127.0.0.1:0",
    ]);
    let printed = emu.stdout_until("SCP_PROXY_SERVICES__VIRTUALSERVER__UPSTREAM=");
    let env: Vec<(String, String)> = printed
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let get = |k: &str| -> String {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in:\n{}", printed.join("\n")))
    };
    let (url, ak, secret, account) = (
        get("SCP_EMULATOR_URL"),
        get("SCP_ACCESS_KEY"),
        get("SCP_SECRET_KEY"),
        get("SCP_ACCOUNT_ID"),
    );
    let started = emu.wait_log("SCP emulator listening");
    assert_eq!(started["url"], url.as_str());
    assert_eq!(started["access_key"], ak.as_str());
    assert_eq!(get("SCP_PROXY_CREDENTIALS__ACCESS_KEY"), ak);
    assert_eq!(get("SCP_PROXY_CREDENTIALS__ACCOUNT_ID"), account);
    assert_eq!(get("SCP_PROXY_SERVICES__VIRTUALSERVER__UPSTREAM"), url);
    assert!(secret.len() >= 32 && account.len() == 32, "{printed:?}");
    // Shell- and env-file-safe values.
    for (k, v) in &env {
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":/.-_".contains(&b)),
            "{k}={v}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    // The service's upstream and the key pair come from the printed lines alone.
    dev_config().write(&file);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proxy = common::Proc::start(&["--config", file.to_str().unwrap()], &envs);
    let base = format!("http://{}", proxy.addr);
    let r = send(request(Method::GET, &format!("{base}/v1/images"), None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["images"][0]["id"], DEMO_IMAGE_ID);
    assert_eq!(r.json()["images"][0]["owner"], account.as_str());
    // %2D is '-': the same demo image.
    let encoded = DEMO_IMAGE_ID.replacen('-', "%2D", 1);
    let r = send(request(
        Method::GET,
        &format!("{base}/v1/images/{encoded}"),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["id"], DEMO_IMAGE_ID);
    let r = send(request(
        Method::GET,
        &format!("{base}/v1/images/a%20b"),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let detail = r.scp_error()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("\"a b\""), "{detail}");

    assert!(emu.terminate().success());
    let log = format!("{}\n{}", emu.seen.join("\n"), proxy.log());
    assert!(!log.contains(&secret), "the secret reached a log:\n{log}");
}

/// A given secret is not repeated on stdout; the defaults for the rest stay as before.
#[tokio::test]
async fn standalone_emulator_with_a_key_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "sentinel-given-SECRET\n").unwrap();
    let mut emu = Proc::spawn(&[
        "--log-format",
        "json",
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--secret-key-file",
        file.to_str().unwrap(),
    ]);
    let printed = emu.stdout_until("SCP_PROXY_SERVICES").join("\n");
    assert!(!printed.contains("sentinel"), "{printed}");
    assert!(
        printed.contains(&format!(
            "SCP_ACCESS_KEY={}\n",
            emulator::DEFAULT_ACCESS_KEY
        )),
        "{printed}"
    );
    assert!(printed.contains("SCP_ACCOUNT_ID=\n"), "{printed}");
    assert!(
        printed.contains(&format!("# SCP_SECRET_KEY: as given ({})", file.display())),
        "{printed}"
    );
    assert!(emu.terminate().success());
}

fn config_dir() -> String {
    format!("{}/config", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_profile_dev_succeeds_with_no_secret() {
    let out = common::bin::output(
        &[
            "check-config",
            "--profile",
            "dev",
            "--config-dir",
            &config_dir(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("emulator"), "{text}");
}

#[tokio::test]
async fn profile_dev_binary_serves_the_quick_start() {
    let mut p = Proc::spawn(&[
        "--log-format",
        "json",
        "--profile",
        "dev",
        "--config-dir",
        &config_dir(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let started = p.wait_log("dev profile");
    let proxy = started["proxy"]
        .as_str()
        .expect("proxy url logged")
        .to_owned();
    let emu = started["emulator"].as_str().expect("emulator url logged");
    assert!(emu.starts_with("http://127.0.0.1:"), "{emu}");
    let import = format!("{proxy}/v1/images/{DEMO_IMAGE_ID}/import");
    let url = "https://object-store.kr-west1.e.samsungsdscloud.com/dev-account:demo-bucket/images/ubuntu-22.04.qcow2";
    let r = send(request(Method::POST, &import, Some(json!({ "url": url })))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = send(request(
        Method::GET,
        &format!("{proxy}/v1/images/{DEMO_IMAGE_ID}"),
        None,
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "importing");
    let r = send(request(Method::POST, &import, Some(json!({ "url": url })))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.headers.contains_key("content-type"));
    assert!(p.terminate().success());
}
