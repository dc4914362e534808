//! Forward-proxy mode through the real binary: curl and an unchanged SCP SDK use the proxy as
//! `HTTPS_PROXY` with its CA, and the emulator (or a recording upstream) checks what arrives.
//! Nothing resolves the public host names: a proxy client sends them in CONNECT, and the proxy
//! forwards to the configured upstream.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VS_HOST: &str = "virtualserver.kr-west1.e.samsungsdscloud.com";
const DEMO_IMAGE_ID: &str = "3f8c2a6e-9b1d-4c7a-8e5f-2d0b6a9c4e17";
/// A second intercepted service whose upstream records what it receives.
const REC_HOST: &str = "recorded.kr-west1.e.samsungsdscloud.com";

struct Setup {
    dir: tempfile::TempDir,
    emulator: Proc,
    proxy: Proc,
    forward: SocketAddr,
    ca: PathBuf,
}

fn write_private(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn emulator(dir: &Path) -> Proc {
    let secret = dir.join("emulator-secret");
    write_private(&secret, SECRET, 0o600);
    Proc::emulator(&[
        "--listen",
        "127.0.0.1:0",
        "--secret-key-file",
        secret.to_str().unwrap(),
        "--import-delay",
        "300ms",
    ])
}

/// The proxy's configuration: virtualserver to the emulator, intercepting the SCP host;
/// `extra` is appended (more services, `[forward_proxy]` CA files).
fn proxy_toml(dir: &Path, emulator: SocketAddr, extra: &str, forward: &str) -> PathBuf {
    let secret = dir.join("proxy-secret");
    write_private(&secret, SECRET, 0o600);
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
check_live_versions = false
shutdown_grace = "10s"
[credentials]
access_key = "emulator-access-key"
secret_key_file = "{secret}"
watch_interval = "0s"
[services.virtualserver]
upstream = "http://{emulator}"
api_version = "1.3"
region = "kr-west1"
intercept = ["{VS_HOST}:443"]
{extra}
[forward_proxy]
listen = "127.0.0.1:0"
{forward}
"#,
            secret = secret.display(),
        ),
    )
    .unwrap();
    path
}

fn start(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator(dir.path());
    let ca = dir.path().join("ca.pem");
    let forward = format!("ca_cert_out = \"{}\"", ca.display());
    let config = proxy_toml(dir.path(), emulator.addr, extra, &forward);
    let proxy = Proc::start(&["--config", config.to_str().unwrap()], &[]);
    let fwd = proxy.forward_addr.expect("forward_addr logged");
    Setup {
        dir,
        emulator,
        proxy,
        forward: fwd,
        ca,
    }
}

/// Runs curl through the forward proxy with a deadline; returns (stdout, stderr, success).
fn curl(forward: SocketAddr, ca: &Path, args: &[&str]) -> (String, String, bool) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x"])
        .arg(format!("http://{forward}"))
        .arg("--cacert")
        .arg(ca)
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("curl runs (install curl)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// The last line of curl's output when `-w '\n%{http_code} %{http_version}'` was given.
fn status_line(out: &str) -> &str {
    out.rsplit('\n').next().unwrap_or_default()
}

async fn metrics(admin: SocketAddr) -> String {
    raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_forward_listener_is_signed_afresh() {
    let up = RecordingUpstream::start(SECRET).await;
    let extra = format!(
        "[services.recorded]\nupstream = \"{}\"\napi_version = \"1.0\"\nintercept = [\"{REC_HOST}:443\"]\nallow_unsupported_version = true\n",
        up.base()
    );
    let s = start(&extra);
    let url = format!("https://{VS_HOST}/v1/images");
    let (forward, ca, u) = (s.forward, s.ca.clone(), url.clone());
    let (out, err, ok) = tokio::task::spawn_blocking(move || {
        curl(
            forward,
            &ca,
            &[
                "-H",
                "Scp-Signature: forged-by-the-client",
                "-H",
                "Scp-Accesskey: the-tools-own-key",
                "-w",
                "\n%{http_code} %{http_version}",
                &u,
            ],
        )
    })
    .await
    .unwrap();
    println!(
        "$ curl -x http://{} --cacert ca.pem {url}\n{out}\n{err}",
        s.forward
    );
    assert!(ok, "{err}");
    // The emulator checks the signature and refuses a second Scp-Signature or Scp-Accesskey
    // (401): 200 means the proxy's signature arrived, alone, and the forged one never did.
    assert_eq!(status_line(&out), "200 2", "{out}\n{}", s.proxy.log());
    // Control: the client's headers sent to the emulator directly are refused.
    let direct = raw(
        s.emulator.addr,
        format!("GET /v1/images HTTP/1.1\r\nHost: {VS_HOST}\r\nScp-Signature: forged-by-the-client\r\nScp-Accesskey: the-tools-own-key\r\nScp-Timestamp: 0\r\nScp-ClientType: Openapi\r\nScp-Api-Version: virtualserver 1.3\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(direct.starts_with("HTTP/1.1 401"), "{direct}");
    let body: serde_json::Value = serde_json::from_str(out.rsplit_once('\n').unwrap().0).unwrap();
    assert_eq!(body["images"][0]["id"], DEMO_IMAGE_ID, "{out}");

    // The same through a recording upstream: what arrives is the proxy's signature only.
    let url = format!("https://{REC_HOST}/v1/things?a=1");
    let (forward, ca) = (s.forward, s.ca.clone());
    let (out, err, ok) = tokio::task::spawn_blocking(move || {
        curl(
            forward,
            &ca,
            &[
                "--http1.1",
                "-H",
                "Scp-Signature: forged-by-the-client",
                "-H",
                "Scp-Accesskey: the-tools-own-key",
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(status_line(&out), "200 1.1", "{out}");
    let r = up
        .requests()
        .pop()
        .expect("the request reached the upstream");
    assert_eq!(r.target, "/v1/things?a=1");
    assert!(r.signature_ok, "signature not the proxy's: {:?}", r.headers);
    let sigs: Vec<_> = r.headers.get_all("scp-signature").iter().collect();
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    assert_ne!(sigs[0], "forged-by-the-client");
    assert_eq!(r.headers["scp-accesskey"], "emulator-access-key");
    assert_eq!(r.headers["host"], up.addr.to_string().as_str());

    // One access line per inner request, marked as forward mode; metrics by listener.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s
        .proxy
        .log()
        .contains("\"mode\":\"forward\",\"method\":\"GET\",\"service\":\"recorded\"")
    {
        assert!(
            Instant::now() < deadline,
            "no access line:\n{}",
            s.proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = metrics(s.proxy.admin_addr).await;
    assert!(
        m.contains("scp_auth_proxy_requests_total{service=\"virtualserver\",method=\"GET\",status_class=\"2xx\",listener=\"forward\"} 1"),
        "{m}"
    );
    // The CA is served on the admin listener, and it is the one written to ca_cert_out.
    let pem = raw(
        s.proxy.admin_addr,
        b"GET /ca.pem HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    let written = std::fs::read_to_string(&s.ca).unwrap();
    assert!(
        written.starts_with("-----BEGIN CERTIFICATE-----"),
        "{written}"
    );
    assert!(pem.contains(&written), "{pem}");
    assert!(!pem.contains("PRIVATE KEY"));
    drop(s.emulator);
}

/// Opens a CONNECT for `authority` on the forward listener; returns the stream and the
/// answer's head and body (read until the head ends and, for a refusal, until close).
async fn connect(forward: SocketAddr, authority: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(forward).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return (s, text.into_owned());
            }
        }
        if n == 0 {
            return (s, text.into_owned());
        }
    }
}

#[tokio::test]
async fn connect_to_an_unconfigured_host_is_refused_and_nothing_is_connected() {
    // A second service whose upstream counts what reaches it.
    let up = RecordingUpstream::start(SECRET).await;
    let extra = format!(
        "[services.recorded]\nupstream = \"{}\"\napi_version = \"1.0\"\nintercept = [\"{REC_HOST}:443\"]\nallow_unsupported_version = true\n",
        up.base()
    );
    let s = start(&extra);
    // A listener the proxy would reach if it opened a blind tunnel.
    let bystander = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = bystander.local_addr().unwrap().to_string();
    // Sorted, as the proxy lists them: each upstream's own authority and the intercepts.
    let mut allowed = [
        s.emulator.addr.to_string(),
        up.addr.to_string(),
        format!("{REC_HOST}:443"),
        format!("{VS_HOST}:443"),
    ];
    allowed.sort();
    for authority in [
        target.as_str(),
        "example.com:443",
        "virtualserver.kr-west1.e.samsungsdscloud.com:8443",
    ] {
        let (_, answer) = connect(s.forward, authority).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{authority}: {answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["code"], "connect_not_allowed", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(authority),
            "{body}"
        );
        assert_eq!(body["allowed"], serde_json::json!(allowed), "{body}");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bystander.accept())
            .await
            .is_err(),
        "the proxy connected to a host it refused"
    );
    // Absolute-form plain HTTP: the same rule.
    let answer = raw(
        s.forward,
        format!(
            "GET http://{target}/v1/images HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("\"authority_not_allowed\""), "{answer}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bystander.accept())
            .await
            .is_err(),
        "the proxy connected to a host it refused"
    );
    // Nowhere else either: no upstream saw a request, none reached the data-plane stack.
    assert_eq!(up.count(), 0, "a refused request reached an upstream");
    let m = metrics(s.proxy.admin_addr).await;
    assert!(!m.contains("scp_auth_proxy_requests_total{"), "{m}");
    // ... and a configured one is routed to its service.
    let answer = raw(
        s.forward,
        format!("GET http://{VS_HOST}/v1/images HTTP/1.1\r\nHost: {VS_HOST}\r\nScp-Signature: forged\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(DEMO_IMAGE_ID), "{answer}");
    // Counted when the response ends, which the client may see first: poll.
    let admin = s.proxy.admin_addr;
    let both = poll_until(Duration::from_secs(5), || async move {
        let m = metrics(admin).await;
        (m.contains("scp_auth_proxy_connect_refusals_total{reason=\"not_allowed\"} 4")
            && m.contains("scp_auth_proxy_requests_total{service=\"virtualserver\",method=\"GET\",status_class=\"2xx\",listener=\"forward\"} 1"))
        .then_some(())
    })
    .await;
    let m = metrics(admin).await;
    assert!(both.is_some(), "{m}");
    assert_eq!(up.count(), 0);
}

fn tls_connector(ca: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn tls_naming_another_host_than_the_connect_fails_the_handshake() {
    let s = start("");
    let tls = tls_connector(&s.ca, &[b"http/1.1"]);
    // Control: the CONNECT host itself handshakes and is served.
    let (stream, answer) = connect(s.forward, &format!("{VS_HOST}:443")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let name = rustls::pki_types::ServerName::try_from(VS_HOST).unwrap();
    let mut ok = tls
        .connect(name, stream)
        .await
        .expect("handshake for the CONNECT host");
    ok.write_all(
        format!("GET /v1/images HTTP/1.1\r\nHost: {VS_HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), ok.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Another name (a valid one the CA would sign for nobody) on the same CONNECT: refused.
    let (stream, answer) = connect(s.forward, &format!("{VS_HOST}:443")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let other = rustls::pki_types::ServerName::try_from("iam.e.samsungsdscloud.com").unwrap();
    let err = tls
        .connect(other, stream)
        .await
        .expect_err("the handshake must fail");
    println!("SNI mismatch: {err}");
    // The client sees the alert before the proxy has necessarily counted the refusal.
    let admin = s.proxy.admin_addr;
    let counted = poll_until(Duration::from_secs(5), || async move {
        let m = metrics(admin).await;
        m.contains("scp_auth_proxy_connect_refusals_total{reason=\"sni_mismatch\"} 1")
            .then_some(())
    })
    .await;
    let m = metrics(admin).await;
    assert!(counted.is_some(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_other_than_the_tunnels_is_421() {
    let s = start("");
    let (forward, ca) = (s.forward, s.ca.clone());
    let (out, err, ok) = tokio::task::spawn_blocking(move || {
        curl(
            forward,
            &ca,
            &[
                "--http1.1",
                "-H",
                "Host: iam.e.samsungsdscloud.com",
                "-w",
                "\n%{http_code}",
                &format!("https://{VS_HOST}/v1/images"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(status_line(&out), "421", "{out}");
    assert_eq!(
        error_code(&bytes::Bytes::from(
            out.rsplit_once('\n').unwrap().0.to_owned()
        )),
        "misdirected_request"
    );
    // The same host with its port spelled out is the tunnel's.
    let (forward, ca) = (s.forward, s.ca.clone());
    let (out, _, _) = tokio::task::spawn_blocking(move || {
        curl(
            forward,
            &ca,
            &[
                "--http1.1",
                "-H",
                &format!("Host: {VS_HOST}:443"),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://{VS_HOST}/v1/images"),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_inside_the_tunnel() {
    let s = start("");
    let (forward, ca) = (s.forward, s.ca.clone());
    let (out, err, ok) = tokio::task::spawn_blocking(move || {
        curl(
            forward,
            &ca,
            &[
                "--http2",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version} %{num_connects}\n",
                &format!("https://{VS_HOST}/v1/images"),
                &format!("https://{VS_HOST}/v1/images/{DEMO_IMAGE_ID}"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    // Both over HTTP/2, the second on the same tunnel (no new connection).
    assert_eq!(out, "200 2 1\n200 2 0\n", "{out}");
}

/// A team CA made with openssl: PKCS#8 EC key, subject key identifier by SHA-1 (openssl's way).
fn openssl_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("team-ca.crt"), dir.join("team-ca.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
        ])
        .args(["-subj", "/O=Example Platform Team/CN=Example Team CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_key_readable_by_others_refuses_the_start_and_a_private_one_serves() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(dir.path());
    let (cert, key) = openssl_ca(dir.path());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let forward = format!(
        "ca_cert_file = \"{}\"\nca_key_file = \"{}\"",
        cert.display(),
        key.display()
    );
    let config = proxy_toml(dir.path(), emu.addr, "", &forward);
    let out = Command::new(env!("CARGO_BIN_EXE_scp-auth-proxy"))
        .args(["--config", config.to_str().unwrap()])
        .env_remove("SCP_SECRET_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(key.to_str().unwrap()), "{err}");
    assert!(err.contains("readable by group or others"), "{err}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = Proc::start(&["--config", config.to_str().unwrap()], &[]);
    let forward = proxy.forward_addr.unwrap();
    let (out, err, ok) = tokio::task::spawn_blocking(move || {
        curl(
            forward,
            &cert,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://{VS_HOST}/v1/images"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}\n{}", proxy.log());
    assert_eq!(out, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_tunnelled_request_is_in_flight_lets_it_complete() {
    let up = RecordingUpstream::start(SECRET).await;
    let extra = format!(
        "[services.recorded]\nupstream = \"{}\"\napi_version = \"1.0\"\nintercept = [\"{REC_HOST}:443\"]\nallow_unsupported_version = true\n",
        up.base()
    );
    let mut s = start(&extra);
    let (forward, ca) = (s.forward, s.ca.clone());
    let slow = tokio::task::spawn_blocking(move || {
        curl(
            forward,
            &ca,
            &[
                "-w",
                "\n%{http_code}",
                &format!("https://{REC_HOST}/v1/slow/1500"),
            ],
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "request never arrived:\n{}",
            s.proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.proxy.signal("TERM");
    let (out, err, ok) = slow.await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(status_line(&out), "200", "{out}");
    assert_eq!(
        s.proxy.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        s.proxy.log()
    );
    drop(s.dir);
}

/// The unmodified SDK: it reads nothing but what every `requests` user has (`HTTPS_PROXY`,
/// `REQUESTS_CA_BUNDLE`) and is told only `no_proxy=False` and a dummy key pair.
const SDK_SCRIPT: &str = r#"
import scpv2
sess = scpv2.Session(access_key="dummy-access-key", secret_key="dummy-secret-key",
                     region="kr-west1", environment="e", no_proxy=False)
print("endpoint", sess.endpoint_for("virtualserver"))
c = sess.client("virtualserver_image")
listed = c.list_images()
print("list_images", listed["ResponseMetadata"]["HTTPStatusCode"], [i["id"] for i in listed["images"]])
image = listed["images"][0]["id"]
url = "https://object-store.kr-west1.e.samsungsdscloud.com/acct:bucket/images/ubuntu-22.04.qcow2"
imported = c.import_image(image_id=image, url=url)
print("import_image", imported["ResponseMetadata"]["HTTPStatusCode"])
shown = c.show_image(image_id=image)
print("show_image", shown["ResponseMetadata"]["HTTPStatusCode"], shown["status"])
"#;

#[test]
fn python_sdk_lists_and_imports_through_the_forward_listener() {
    let python = common::python::sdk_python();
    let s = start("");
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&python);
    cmd.args(["-c", SDK_SCRIPT])
        .env("HTTPS_PROXY", format!("http://{}", s.forward))
        .env("REQUESTS_CA_BUNDLE", &s.ca)
        // No ~/.scpconf, no key, no other proxy or CA setting from the environment.
        .env("HOME", home.path());
    for var in [
        "SCP_ACCESS_KEY",
        "SCP_SECRET_KEY",
        "SCP_REGION",
        "SCP_ENVIRONMENT",
        "NO_PROXY",
        "no_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "CURL_CA_BUNDLE",
    ] {
        cmd.env_remove(var);
    }
    let out = common::python::run(
        &mut cmd,
        "scpv2-sdk through HTTPS_PROXY",
        Duration::from_secs(60),
    );
    println!(
        "$ HTTPS_PROXY=http://{} REQUESTS_CA_BUNDLE=ca.pem python sdk.py\n{out}",
        s.forward
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("endpoint https://{VS_HOST}").as_str(),
            format!("list_images 200 ['{DEMO_IMAGE_ID}']").as_str(),
            "import_image 202",
            "show_image 200 importing",
        ],
        "{}",
        s.proxy.log()
    );
    // Every call went through the forward listener and was signed there. The access line is
    // written after the answer, so the last one may still be on its way: poll for all three.
    let forward_lines = || {
        s.proxy
            .log()
            .matches("\"mode\":\"forward\",\"method\"")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while forward_lines() < 3 {
        assert!(
            Instant::now() < deadline,
            "no access line:\n{}",
            s.proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.proxy.log().contains("\"method\":\"POST\",\"service\":\"virtualserver\",\"path\":\"/v1/images/3f8c2a6e-9b1d-4c7a-8e5f-2d0b6a9c4e17/import\",\"status\":202"), "{}", s.proxy.log());
    assert_eq!(
        s.proxy
            .log()
            .matches("\"mode\":\"forward\",\"method\"")
            .count(),
        3,
        "{}",
        s.proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_under_the_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(dir.path());
    let config = proxy_toml(dir.path(), emu.addr, "", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[server]\n", "[server]\nmax_connections = 2\n");
    std::fs::write(&config, text).unwrap();
    let proxy = Proc::start(&["--config", config.to_str().unwrap()], &[]);
    let forward = proxy.forward_addr.unwrap();
    let authority = format!("{VS_HOST}:443");
    let (first, answer) = connect(forward, &authority).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_second, answer) = connect(forward, &authority).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Two open tunnels fill the cap: a third connection waits in the backlog, unanswered.
    let mut third = TcpStream::connect(forward).await.unwrap();
    third
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "answered past the cap"
    );
    // A tunnel that ends frees its place.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("answered once a place was free")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        proxy
            .log()
            .contains("forward proxy: connection cap reached"),
        "{}",
        proxy.log()
    );
}

/// Sends SIGHUP and waits (bounded) for the `n`th successful reload.
async fn reload(s: &Setup, n: usize) {
    s.proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .proxy
        .log()
        .matches("configuration and key pair reloaded")
        .count()
        < n
    {
        assert!(Instant::now() < deadline, "no reload:\n{}", s.proxy.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_sends_an_intercepted_host_to_another_service() {
    let up = RecordingUpstream::start(SECRET).await;
    let service = |name: &str, intercept: &str| {
        format!(
            "[services.{name}]\nupstream = \"{}\"\napi_version = \"1.0\"\nintercept = [{intercept}]\nallow_unsupported_version = true\n",
            up.base()
        )
    };
    let recorded = service("recorded", &format!("\"{REC_HOST}:443\""));
    let s = start(&recorded);
    let forward = format!("ca_cert_out = \"{}\"", s.ca.display());
    let get = |url: String| {
        let (fwd, ca) = (s.forward, s.ca.clone());
        tokio::task::spawn_blocking(move || curl(fwd, &ca, &["-w", "\n%{http_code}", &url]))
    };
    // A service whose name sorts before both (services are kept in name order), so every
    // service's position in the routing table moves.
    let archive = service("archive", "");
    proxy_toml(
        s.dir.path(),
        s.emulator.addr,
        &format!("{archive}{recorded}"),
        &forward,
    );
    reload(&s, 1).await;
    let (out, err, ok) = get(format!("https://{VS_HOST}/v1/images")).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        up.count(),
        0,
        "virtualserver's host went to another service's upstream"
    );
    assert_eq!(status_line(&out), "200", "{out}\n{}", s.proxy.log());
    assert!(
        s.proxy
            .log()
            .contains("the hosts the forward proxy intercepts"),
        "the changed table is named as restart-only:\n{}",
        s.proxy.log()
    );
    // A reload that removes a service: its host stays intercepted until a restart, and its
    // requests are refused, never sent to another service.
    proxy_toml(s.dir.path(), s.emulator.addr, &archive, &forward);
    reload(&s, 2).await;
    let (out, err, ok) = get(format!("https://{REC_HOST}/v1/things")).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(status_line(&out), "421", "{out}\n{}", s.proxy.log());
    assert!(out.contains("intercepted_service_gone"), "{out}");
    assert_eq!(up.count(), 0);
}

/// The forward listener serves a connection a burst at a time, like the plain one: a
/// connection carries on after a plain (absolute-form) request, with or without a body, and
/// a CONNECT after those still opens a working tunnel on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_carries_on_from_plain_requests_to_a_tunnel() {
    let s = start("");
    let mut tcp = TcpStream::connect(s.forward).await.unwrap();
    let read_answer = async |tcp: &mut TcpStream| {
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return text;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline.into(), tcp.read(&mut chunk))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "closed: {text}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    for request in [
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\ncontent-length: 5\r\n\r\nhello",
    ] {
        tcp.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("authority_not_allowed"), "{answer}");
    }
    let authority = format!("{VS_HOST}:443");
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let name = rustls::pki_types::ServerName::try_from(VS_HOST.to_owned()).unwrap();
    let mut tls = tls_connector(&s.ca, &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("TLS inside the tunnel");
    tls.write_all(
        format!("GET /v1/images HTTP/1.1\r\nHost: {VS_HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// Issue 13.1 on the forward listener: a keep-alive connection idle after a request holds
/// no hyper buffers (about 11 KB each with hyper's connection kept, about 3 KB now, read once
/// the trim after the lingering connections went quiet has run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_forward_connections_hold_no_hyper_buffers() {
    const N: usize = 300;
    let s = start("");
    let pid = s.proxy.pid();
    let request =
        "POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\ncontent-length: 100\r\n\r\n"
            .to_owned()
            + &"x".repeat(100);
    let open = async || {
        let mut tcp = TcpStream::connect(s.forward).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        while !String::from_utf8_lossy(&buf).contains("}") {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 403"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
        tcp
    };
    for _ in 0..20 {
        drop(open().await);
    }
    let base = common::stream::settled_rss_bytes(pid).await;
    let mut kept = Vec::new();
    for _ in 0..N {
        kept.push(open().await);
    }
    let per = common::stream::settled_rss_bytes(pid)
        .await
        .saturating_sub(base)
        / N as u64;
    println!("forward listener: {per} B per idle connection ({N})");
    assert!(per < 6 * 1024, "{per} B per idle forward connection");
}
