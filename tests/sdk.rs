//! A real SCP client nobody here wrote, through the proxy: the PyPI package `scpv2-sdk`
//! (pinned in tests/sdk/requirements.txt), driven by tests/sdk/driver.py against the built-in
//! emulator behind the proxy binary (`--profile dev`). The virtualenv comes from `.ci/run`
//! (`SCP_SDK_PYTHON`) or is built under target/ (tests/common/python.rs); without PyPI this
//! test fails, it does not skip. Run with `--nocapture` to see every call and its status.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::python;

const DEMO_IMAGE_ID: &str = "3f8c2a6e-9b1d-4c7a-8e5f-2d0b6a9c4e17";
const ODD_NAME: &str = "우분투 a+b/c:d";

fn manifest(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

/// The proxy binary with `--profile dev` (every service on the in-process emulator), with
/// `envs` (`SCP_PROXY_` overrides).
fn dev_proxy_with(envs: &[(&str, &str)]) -> common::Proc {
    common::Proc::start(
        &[
            "--profile",
            "dev",
            "--config-dir",
            &manifest("config"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        envs,
    )
}

fn dev_proxy() -> common::Proc {
    dev_proxy_with(&[])
}

/// `service_name -> url` of an endpoint catalog call's body.
fn catalog_urls(c: &Value) -> Vec<(String, String)> {
    c["body"]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints: {c}"))
        .iter()
        .map(|e| {
            (
                e["service_name"].as_str().unwrap().to_owned(),
                e["url"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Runs the driver's `scenarios` against `proxy`; returns every call it made, printing its
/// report.
fn drive(proxy: &common::Proc, account: &str, scenarios: &[&str]) -> Vec<Value> {
    drive_with(account, scenarios, |cmd| {
        cmd.args(["--proxy", &format!("http://{}", proxy.addr)]);
    })
}

/// Runs the driver with `setup` choosing where it goes (`--proxy` or `--forward` and its
/// environment); no key, proxy or CA setting comes from the test's own environment.
fn drive_with(account: &str, scenarios: &[&str], setup: impl FnOnce(&mut Command)) -> Vec<Value> {
    let python = python::sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("calls.json");
    let mut cmd = Command::new(&python);
    cmd.arg(manifest("tests/sdk/driver.py"));
    for var in [
        "SCP_ACCESS_KEY",
        "SCP_SECRET_KEY",
        "SCP_REGION",
        "SCP_ENVIRONMENT",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        cmd.env_remove(var);
    }
    // No ~/.scpconf either.
    cmd.env("HOME", dir.path());
    setup(&mut cmd);
    let out = python::run(
        cmd.args(["--account", account])
            .arg("--results")
            .arg(&results)
            .args(scenarios)
            .env("PYTHONIOENCODING", "utf-8"),
        "tests/sdk/driver.py",
        Duration::from_secs(120),
    );
    println!("{out}");
    let text = std::fs::read_to_string(&results).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One call's record: its status, the body, what went on the wire and the version sent.
fn check<'a>(calls: &'a [Value], i: usize, op: &str, status: u16) -> &'a Value {
    let c = &calls[i];
    assert_eq!(c["call"], op, "call {i}: {c}");
    assert_eq!(c["status"], status, "{op}: {c}");
    c
}

#[test]
fn python_sdk_through_the_dev_profile() {
    let proxy = dev_proxy();
    let calls = drive(
        &proxy,
        "dev-account",
        &["images", "security-group", "catalog"],
    );
    assert_eq!(calls.len(), 11, "{calls:#?}");
    let at = format!("http://{}", proxy.addr);

    // The IAM endpoint catalog: the SDK sends `iam 1.4`, which the dev profile pins; the
    // services the proxy serves point at its prefixes, the others stay and are named.
    let c = check(&calls, 0, "endpoint.get_endpoint_list", 200);
    assert_eq!(c["version"], "iam 1.4");
    assert_eq!(c["wire"], format!("GET {at}/iam/v1/endpoints"), "{c}");
    assert_eq!(
        catalog_urls(c),
        [
            ("virtualserver".to_owned(), format!("{at}/virtualserver")),
            ("iam".to_owned(), format!("{at}/iam")),
            (
                "vpc".to_owned(),
                "https://vpc.kr-west1.e.samsungsdscloud.com".to_owned()
            ),
            (
                "dns".to_owned(),
                "https://dns.kr-west1.e.samsungsdscloud.com".to_owned()
            ),
        ],
        "{c}"
    );
    assert_eq!(c["unrouted"], "vpc,dns", "{c}");

    let c = check(&calls, 1, "virtualserver_image.list_images", 200);
    assert_eq!(c["version"], "virtualserver 1.3");
    assert_eq!(c["body"]["images"][0]["id"], DEMO_IMAGE_ID, "{c}");
    let c = check(&calls, 2, "virtualserver_image.show_image", 200);
    assert_eq!(c["body"]["id"], DEMO_IMAGE_ID);
    assert_eq!(c["body"]["status"], "queued");
    let c = check(&calls, 3, "virtualserver_image.create_image", 201);
    let created = c["body"]["id"].as_str().unwrap().to_owned();
    assert_eq!(c["body"]["name"], ODD_NAME);

    // Space, '+', '/', ':', non-ASCII and a repeated key: signed by the proxy as sent, so the
    // emulator's check passes, and it decoded the name back to exactly the one created.
    let c = check(&calls, 4, "virtualserver_image.list_images", 200);
    let wire = c["wire"].as_str().unwrap();
    assert!(
        wire.contains("name=%EC%9A%B0%EB%B6%84%ED%88%AC+a%2Bb%2Fc%3Ad")
            && wire.contains("sort=name%3Aasc&sort=created_at%3Adesc"),
        "{wire}"
    );
    let found: Vec<&str> = c["body"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, [created.as_str()], "{c}");

    check(&calls, 5, "virtualserver_image.import_image", 202);
    let c = check(&calls, 6, "virtualserver_image.import_image", 409);
    assert_eq!(c["body"]["errors"][0]["code"], "Image.InvalidState", "{c}");

    // The SDK sends `virtualserver 1.0` for this operation; the dev profile's operation pin
    // accepts it, and the emulator (no catalog dates for it) serves it.
    let c = check(
        &calls,
        7,
        "virtualserver.attach_virtual_server_security_group",
        202,
    );
    assert_eq!(c["version"], "virtualserver 1.0");

    // Following the catalog: the virtualserver calls go to the URL IAM gave, the proxy's.
    check(&calls, 8, "endpoint.get_endpoint_list", 200);
    let c = check(&calls, 9, "virtualserver_image.list_images", 200);
    assert_eq!(
        c["wire"],
        format!("GET {at}/virtualserver/v1/images"),
        "{c}"
    );
    assert_eq!(c["body"]["images"][0]["id"], DEMO_IMAGE_ID, "{c}");
    let c = check(&calls, 10, "virtualserver_image.show_image", 200);
    assert_eq!(
        c["wire"],
        format!("GET {at}/virtualserver/v1/images/{DEMO_IMAGE_ID}"),
        "{c}"
    );
    assert_eq!(c["body"]["id"], DEMO_IMAGE_ID, "{c}");

    let log = proxy.log();
    assert!(
        !log.contains("app-holds-no-key"),
        "the SDK's dummy key reached the log"
    );
}

/// Without the operation pin, the one service pin refuses what the SDK sends for it, naming
/// the sent and the applicable pin and where that pin comes from.
#[test]
fn python_sdk_security_group_call_without_its_operation_pin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [emulator]\nin_process = true\n[credentials]\naccount_id = \"dev-account\"\n\
         [routing]\ndefault_service = \"virtualserver\"\n\
         [services.virtualserver]\napi_version = \"1.3\"\nregion = \"kr-west1\"\n",
    )
    .unwrap();
    let proxy = common::Proc::start(&["--config", file.to_str().unwrap()], &[]);
    let calls = drive(&proxy, "dev-account", &["security-group"]);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let c = check(
        &calls,
        0,
        "virtualserver.attach_virtual_server_security_group",
        400,
    );
    assert_eq!(c["version"], "virtualserver 1.0");
    assert_eq!(c["body"]["code"], "api_version_mismatch", "{c}");
    let m = c["body"]["message"].as_str().unwrap();
    assert!(
        m.contains("\"virtualserver 1.0\"")
            && m.contains("\"virtualserver 1.3\"")
            && m.contains("services.virtualserver.api_version"),
        "{m}"
    );
}

/// What the rewrite is for: with it off, the catalog names the emulator itself, and the SDK
/// following it calls the upstream directly with the app's dummy key: 401.
#[test]
fn python_sdk_following_the_catalog_without_the_rewrite_goes_around_the_proxy() {
    let proxy = dev_proxy_with(&[("SCP_PROXY_ROUTING__REWRITE_ENDPOINT_CATALOG", "false")]);
    let calls = drive(&proxy, "dev-account", &["catalog"]);
    assert_eq!(calls.len(), 3, "{calls:#?}");
    let c = check(&calls, 0, "endpoint.get_endpoint_list", 200);
    assert!(c["unrouted"].is_null(), "{c}");
    let urls = catalog_urls(c);
    let vs = &urls[0];
    assert_eq!(vs.0, "virtualserver");
    assert!(
        vs.1.starts_with("http://127.0.0.1:") && !vs.1.contains(&proxy.addr.to_string()),
        "{urls:?}"
    );
    let c = check(&calls, 1, "virtualserver_image.list_images", 401);
    assert_eq!(c["wire"], format!("GET {}/v1/images", vs.1), "{c}");
    check(&calls, 2, "virtualserver_image.show_image", 401);
}

/// Through the forward proxy (`HTTPS_PROXY`), the SDK asks IAM at its own public URL and gets
/// the services' public names back, never the proxy's loopback prefixes (which would not go
/// through the forward listener) nor the emulator's port (a 401 with the dummy key); following
/// the catalog stays in the tunnel and is signed there.
#[test]
fn python_sdk_follows_the_catalog_through_the_forward_proxy() {
    const VS_HOST: &str = "virtualserver.kr-west1.e.samsungsdscloud.com";
    const IAM_HOST: &str = "iam.kr-west1.e.samsungsdscloud.com";
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "sdk-forward-test-secret").unwrap();
    let emu = common::Proc::emulator(&[
        "--listen",
        "127.0.0.1:0",
        "--secret-key-file",
        secret.to_str().unwrap(),
        "--account-id",
        "dev-account",
    ]);
    let emu_url = format!("http://{}", emu.addr);
    let ca = dir.path().join("ca.pem");
    let cfg = common::TestConfig::new(&emu_url)
        .server("check_live_versions = false")
        .secret_file(&secret)
        .credentials("access_key = \"emulator-access-key\"\naccount_id = \"dev-account\"")
        .service(&format!("intercept = [\"{VS_HOST}:443\"]"))
        .add_service("iam", &emu_url, "1.4")
        .service(&format!("intercept = [\"{IAM_HOST}:443\"]"))
        .raw(&format!(
            "[forward_proxy]\nlisten = \"127.0.0.1:0\"\nca_cert_out = \"{}\"",
            ca.display()
        ))
        .write(dir.path().join("proxy.toml"));
    let proxy = common::Proc::start(&["--config", &cfg], &[]);
    let forward = proxy.forward_addr.expect("forward listener");
    let calls = drive_with("dev-account", &["catalog"], |cmd| {
        cmd.arg("--forward")
            .env("HTTPS_PROXY", format!("http://{forward}"))
            .env("REQUESTS_CA_BUNDLE", &ca);
    });
    assert_eq!(calls.len(), 3, "{calls:#?}\n{}", proxy.log());
    let c = check(&calls, 0, "endpoint.get_endpoint_list", 200);
    assert_eq!(
        c["wire"],
        format!("GET https://{IAM_HOST}/v1/endpoints"),
        "{c}"
    );
    assert_eq!(
        catalog_urls(c)[..2],
        [
            ("virtualserver".to_owned(), format!("https://{VS_HOST}")),
            ("iam".to_owned(), format!("https://{IAM_HOST}")),
        ],
        "{c}"
    );
    assert_eq!(c["unrouted"], "vpc,dns", "{c}");
    let c = check(&calls, 1, "virtualserver_image.list_images", 200);
    assert_eq!(c["wire"], format!("GET https://{VS_HOST}/v1/images"), "{c}");
    let c = check(&calls, 2, "virtualserver_image.show_image", 200);
    assert_eq!(c["body"]["id"], DEMO_IMAGE_ID, "{c}");
    // All three came in on the forward listener.
    assert!(
        common::poll_until_blocking(Duration::from_secs(5), || (proxy
            .log()
            .matches("\"mode\":\"forward\",\"method\"")
            .count()
            == 3)
            .then_some(()))
        .is_some(),
        "{}",
        proxy.log()
    );
}
