//! Test support, one kit for every file in tests/: a recording upstream that re-checks every
//! signature from what it received ([`signature_valid`]), one config builder
//! ([`TestConfig`]), a proxy started in-process on 127.0.0.1:0, the real binary
//! ([`Proc`], [`bin`]), one HTTP client ([`client`], [`send`]) and bounded polls
//! ([`poll_until`]).
#![allow(dead_code)]

pub mod bin;
pub mod config;
pub mod poll;
pub mod python;
pub mod stream;

// Each test file uses some of these; the rest would warn per file.
#[allow(unused_imports)]
pub use self::bin::{bin, run};
#[allow(unused_imports)]
pub use self::config::TestConfig;
#[allow(unused_imports)]
pub use self::poll::{eventually, poll_until, poll_until_blocking};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use scp_auth_proxy::config::Config;
use scp_auth_proxy::credentials::Credentials;

pub const SECRET: &str = "test-secret-Ω-key";
pub const ACCESS_KEY: &str = "test-access-key";

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The raw request target (path and query) exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    /// The body (uploads to /v1/upload are counted, not kept).
    pub body: Bytes,
    pub body_len: u64,
    /// Whether reading the whole body succeeded (false: the proxy aborted it).
    pub body_complete: bool,
    /// The signature recomputed here from what arrived matched `Scp-Signature`.
    pub signature_ok: bool,
}

/// A plain-HTTP upstream on 127.0.0.1:0 that records requests. Behaviour by path:
/// `/v1/status/{code}` answers that status; `/v1/slow/{ms}` waits first; `/v1/upload` counts
/// the body without keeping it; anything else answers 200 with a small JSON body.
#[derive(Clone)]
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    secret: Arc<Mutex<Vec<u8>>>,
    /// Body bytes received so far, over all requests, counted as they arrive.
    received: Arc<AtomicU64>,
    /// TCP connections accepted so far.
    accepted: Arc<AtomicU64>,
}

impl RecordingUpstream {
    pub async fn start(secret: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Self {
            addr,
            seen: Arc::default(),
            secret: Arc::new(Mutex::new(secret.as_bytes().to_vec())),
            received: Arc::default(),
            accepted: Arc::default(),
        };
        let me = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                me.accepted.fetch_add(1, Ordering::Relaxed);
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    /// The secret the upstream checks signatures with from now on (a rotation on its side).
    pub fn set_secret(&self, secret: &str) {
        *self.secret.lock().unwrap() = secret.as_bytes().to_vec();
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// TCP connections the proxy opened to this upstream so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Body bytes received so far (also of requests still in progress).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, mut body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let keep = !parts.uri.path().starts_with("/v1/upload");
        let mut buf = Vec::new();
        let mut len = 0u64;
        let mut complete = true;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        len += d.len() as u64;
                        self.received.fetch_add(d.len() as u64, Ordering::Relaxed);
                        if keep {
                            buf.extend_from_slice(d);
                        }
                    }
                }
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        let signature_ok = self.verify(parts.method.as_str(), &target, &parts.headers);
        self.seen.lock().unwrap().push(Recorded {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts.headers.clone(),
            body: Bytes::from(buf),
            body_len: len,
            body_complete: complete,
            signature_ok,
        });
        let path = parts.uri.path();
        if let Some(code) = path.strip_prefix("/v1/status/") {
            let code: u16 = code.parse().unwrap_or(500);
            return Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .header("x-upstream", "yes")
                .body(Full::new(Bytes::from(format!(
                    "{{\"errors\":[{{\"status\":{code}}}]}}"
                ))))
                .unwrap();
        }
        if let Some(ms) = path.strip_prefix("/v1/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        }
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .body(Full::new(Bytes::from(format!("{{\"received\":{len}}}"))))
            .unwrap()
    }

    /// Recomputes the signature from what arrived: `http://` + Host + raw target.
    fn verify(&self, method: &str, target: &str, h: &HeaderMap) -> bool {
        let secret = self.secret.lock().unwrap().clone();
        signature_valid(&secret, "http", method, target, h)
    }
}

/// Writes `toml` to a temp file and loads it as `--config FILE` would.
pub fn config_from(toml: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, toml).unwrap();
    let cfg = scp_auth_proxy::config::load(
        &scp_auth_proxy::config::Source::File(path),
        &scp_auth_proxy::config::Overrides::default(),
    )
    .unwrap();
    (cfg, dir)
}

/// [`TestConfig::new`] with `account_id`, then `extra` as it is (lines for the service, or
/// further tables), as TOML.
pub fn basic_toml(upstream: &str, account_id: &str, extra: &str) -> String {
    TestConfig::new(upstream)
        .credentials(&format!("account_id = \"{account_id}\""))
        .raw(extra)
        .toml()
}

pub fn credentials(cfg: &Config) -> Credentials {
    Credentials::from_parts(
        ACCESS_KEY,
        SECRET.as_bytes(),
        &cfg.credentials.account_id,
        &cfg.credentials.client_type,
        "test",
    )
    .unwrap()
}

pub async fn start_proxy(cfg: Config) -> scp_auth_proxy::Running {
    let creds = credentials(&cfg);
    scp_auth_proxy::start(cfg, creds).await.unwrap()
}

/// Sends raw bytes and reads the whole answer until the server closes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The request body of the tests' client.
pub type Body =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The one HTTP client of the tests (plain HTTP/1.1 to 127.0.0.1).
pub type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn body(
    b: impl Into<Bytes>,
) -> http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Sends a request, returns status, headers and the whole body.
pub async fn send(
    client: &Client,
    req: Request<
        http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>,
    >,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

pub fn get(
    addr: SocketAddr,
    target: &str,
) -> Request<http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>>
{
    Request::get(format!("http://{addr}{target}"))
        .body(body(Bytes::new()))
        .unwrap()
}

/// Parses a proxy-made JSON error and returns its code.
pub fn error_code(body: &Bytes) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {v}"
    );
    v["code"].as_str().unwrap_or_default().to_owned()
}

/// The real binary, started with `args`; killed by PID when dropped.
pub struct Proc {
    pub child: Option<std::process::Child>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The forward-proxy listener, when the configuration turns it on.
    pub forward_addr: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `scp-auth-proxy` with JSON logs and waits (bounded) for its "serving" line.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Self::start_limited(args, envs, None)
    }

    /// [`Proc::start`] with the child's RLIMIT_NOFILE (soft and hard) set to `fd_limit`.
    pub fn start_limited(args: &[&str], envs: &[(&str, &str)], fd_limit: Option<u64>) -> Proc {
        let (child, log, v) = Self::launch(args, envs, "\"serving\"", fd_limit);
        Proc {
            addr: v["addr"].as_str().unwrap().parse().unwrap(),
            admin_addr: v["admin_addr"].as_str().unwrap().parse().unwrap(),
            forward_addr: v["forward_addr"].as_str().map(|a| a.parse().unwrap()),
            child: Some(child),
            log,
        }
    }

    /// Starts `scp-auth-proxy emulator ARGS` and waits for its "listening" line; `addr` is the
    /// emulator's (it has no admin listener: `admin_addr` repeats it).
    pub fn emulator(args: &[&str]) -> Proc {
        let mut all = vec!["emulator"];
        all.extend_from_slice(args);
        let (child, log, v) = Self::launch(&all, &[], "SCP emulator listening", None);
        let url = v["url"].as_str().unwrap();
        let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        Proc {
            addr,
            admin_addr: addr,
            forward_addr: None,
            child: Some(child),
            log,
        }
    }

    fn launch(
        args: &[&str],
        envs: &[(&str, &str)],
        marker: &str,
        fd_limit: Option<u64>,
    ) -> (std::process::Child, Arc<Mutex<String>>, serde_json::Value) {
        use std::io::BufRead;
        let mut cmd = bin(args);
        if let Some(n) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("--log-format")
            .arg("json")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            let marker = marker.to_owned();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains(&marker) {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("{args:?} did not start; log:\n{}", log.lock().unwrap());
            }
        };
        (child, log, serde_json::from_str(&line).unwrap())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit, then for its output to be read to the end,
    /// and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let code = poll_until_blocking(within, || child.try_wait().unwrap())?.code();
        // Each reader thread holds a clone of `log` until its pipe ends.
        let log = &self.log;
        poll_until_blocking(within, || (Arc::strong_count(log) == 1).then_some(()));
        code
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TLS acceptor for a test upstream: the PEM certificate chain and key at these paths,
/// offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
pub fn tls_acceptor(cert: &str, key: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let cert_pem = std::fs::read(cert).unwrap();
    let key_pem = std::fs::read(key).unwrap();
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

/// Whether `Scp-Signature` in `h` is HMAC-SHA256 with `secret` over what arrived: `scheme`
/// (`http` or `https`, as the proxy's upstream URL has it) + `://` + Host + the raw target,
/// then timestamp, access key, account id and client type. The one verifier of the tests.
pub fn signature_valid(
    secret: &[u8],
    scheme: &str,
    method: &str,
    target: &str,
    h: &HeaderMap,
) -> bool {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let msg = format!(
        "{method}{scheme}://{}{target}{}{}{}{}",
        get("host"),
        get("scp-timestamp"),
        get("scp-accesskey"),
        get("scp-accountid"),
        get("scp-clienttype")
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        == get("scp-signature")
}

/// One scripted answer: status, extra headers, body.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Scripted {
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![],
            body: body.into(),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A plain-HTTP upstream on 127.0.0.1:0 that answers from a script, in order (the last answer
/// repeats), and records every request with whether its signature was valid for [`SECRET`].
#[derive(Clone)]
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<std::collections::VecDeque<Scripted>>>,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

impl ScriptedUpstream {
    pub async fn start(script: Vec<Scripted>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
        };
        let me = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    /// Replaces what is answered from now on.
    pub fn set_script(&self, script: Vec<Scripted>) {
        *self.script.lock().unwrap() = script.into();
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let (bytes, complete) = match body.collect().await {
            Ok(b) => (b.to_bytes(), true),
            Err(_) => (Bytes::new(), false),
        };
        let signature_ok = signature_valid(
            SECRET.as_bytes(),
            "http",
            parts.method.as_str(),
            &target,
            &parts.headers,
        );
        self.seen.lock().unwrap().push(Recorded {
            method: parts.method.to_string(),
            target,
            headers: parts.headers,
            body_len: bytes.len() as u64,
            body: bytes,
            body_complete: complete,
            signature_ok,
        });
        let next = {
            let mut s = self.script.lock().unwrap();
            if s.len() > 1 {
                s.pop_front().unwrap()
            } else {
                s.front()
                    .cloned()
                    .unwrap_or_else(|| Scripted::new(200, "{}"))
            }
        };
        let mut b = Response::builder().status(next.status);
        for (k, v) in &next.headers {
            b = b.header(k, v);
        }
        b.body(Full::new(Bytes::from(next.body))).unwrap()
    }
}
