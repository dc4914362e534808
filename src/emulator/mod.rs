//! The built-in SCP emulator: an upstream that checks requests the way Samsung Cloud Platform
//! does, so the proxy can be tried, developed and tested with no cloud account.
//!
//! * `GET /` (unsigned): the virtualserver version list from [`crate::catalog`].
//! * Everything else must be signed ([`verify`]): a request that is not is answered 401 with
//!   a `detail` saying what did not match. (The real gateway answers unsigned requests with a
//!   bare 404; the emulator says why instead, since it is a developer tool.)
//! * `Scp-Api-Version` is checked against the catalog for the operation called ([`versions`]):
//!   406 when unsupported; a version of an operation the catalog has no dates for is accepted.
//! * virtualserver images in memory ([`images`]): `POST /v1/images`, `GET /v1/images`
//!   (`limit`, `marker`, `name`), `GET|DELETE /v1/images/{id}`, `POST /v1/images/{id}/import`.
//! * A demo server's security groups ([`servers`]): `POST /v1/servers/{id}/security-groups`,
//!   `DELETE /v1/servers/{id}/security-groups/{sg}`.
//! * The IAM endpoint catalog, `GET /v1/endpoints`, listing the emulator itself for virtualserver
//!   and iam, and SCP's own URLs for two services it does not emulate ([`NOT_EMULATED`]).
//!
//! Errors use SCP's shape, `{"errors":[{"code","title","detail","status","request_id"}]}`.
//! The secret key never appears in a response, a log line or `Debug` output.
//!
//! Run it alone with `scp-auth-proxy emulator` (with no key it generates throwaway credentials:
//! [`Standalone::env_lines`]), or in-process for `--profile dev`; the wiring for both is in
//! the command layer (`crate::cmd`), so this module needs nothing of the proxy's stack.

pub mod images;
pub(crate) mod response;
pub(crate) mod servers;
pub(crate) mod verify;
pub(crate) mod versions;

use std::borrow::Cow;
use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::body::Body;
use crate::catalog::Date;
use crate::config::ServerConfig;
use crate::credentials::{self, CredentialsError};
use crate::signer::SigningKey;

use self::images::Images;
use self::response::ScpError;
use self::verify::Verifier;

/// Where `scp-auth-proxy emulator` listens unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 18080);

/// The access key the standalone emulator accepts unless `--access-key` says otherwise.
pub const DEFAULT_ACCESS_KEY: &str = "emulator-access-key";

/// The window SCP documents: a signature is accepted 15 minutes either side of now.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Largest request body the emulator reads (image create and import bodies are tiny).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The services the emulator answers for; all share its one address.
const VIRTUALSERVER: &str = "virtualserver";
const IAM: &str = "iam";
/// Services the endpoint catalog lists at SCP's URLs, not the emulator's.
pub const NOT_EMULATED: [&str; 2] = ["vpc", "dns"];

/// Where the secret key the emulator accepts comes from.
pub enum SecretSource {
    /// Held in memory (the dev profile's throwaway key, `SCP_SECRET_KEY`, tests). Zeroized on
    /// drop; [`EmulatorHandle::reload`] keeps it.
    Memory(Zeroizing<Vec<u8>>),
    /// A file, read at start and again on every [`EmulatorHandle::reload`] (SIGHUP when run
    /// alone). One trailing newline is removed, as for the proxy's key file.
    File(PathBuf),
}

impl SecretSource {
    /// A secret held in memory.
    pub fn memory(secret: impl Into<Vec<u8>>) -> Self {
        SecretSource::Memory(Zeroizing::new(secret.into()))
    }

    /// Where the secret comes from, for messages: a path or "memory", never the value.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Memory(_) => "memory".into(),
            SecretSource::File(p) => p.display().to_string(),
        }
    }

    fn load(&self) -> Result<SigningKey, CredentialsError> {
        match self {
            SecretSource::Memory(s) => {
                if s.is_empty() {
                    return Err(CredentialsError::Empty {
                        what: "secret key",
                        origin: "memory".into(),
                    });
                }
                Ok(SigningKey::new(s))
            }
            SecretSource::File(path) => {
                let raw = std::fs::read(path).map(Zeroizing::new).map_err(|source| {
                    CredentialsError::Unreadable {
                        what: "secret key",
                        path: path.clone(),
                        source,
                    }
                })?;
                let secret = credentials::clean("secret key", &path.display().to_string(), &raw)?;
                Ok(SigningKey::new(secret))
            }
        }
    }
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Memory(_) => f.write_str("Memory(<redacted>)"),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// How an emulator behaves. Build with [`EmulatorOptions::new`] and adjust the fields.
#[derive(Debug)]
pub struct EmulatorOptions {
    /// The one access key it knows.
    pub access_key: String,
    pub secret: SecretSource,
    /// The account id it expects in `Scp-AccountId` (an absent header counts as "").
    pub account_id: String,
    /// How long an accepted import stays `importing` before it is `active`.
    pub import_delay: Duration,
    /// Accepted distance between `Scp-Timestamp` and the clock, either side.
    pub window: Duration,
    /// The clock for the timestamp window, version dates and image times.
    pub clock: fn() -> SystemTime,
    /// The scheme the verifier puts before `Host` in the signed URL. The emulator itself speaks
    /// plain HTTP, so this is `http` unless it sits behind a TLS terminator.
    pub scheme: String,
    /// The region its endpoint catalog reports.
    pub region: String,
}

impl EmulatorOptions {
    /// Defaults: account id "", import delay 3s, a 15-minute window, the system clock,
    /// scheme `http`, region `kr-west1`.
    pub fn new(access_key: impl Into<String>, secret: SecretSource) -> Self {
        Self {
            access_key: access_key.into(),
            secret,
            account_id: String::new(),
            import_delay: Duration::from_secs(3),
            window: DEFAULT_WINDOW,
            clock: SystemTime::now,
            scheme: "http".into(),
            region: "kr-west1".into(),
        }
    }
}

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(transparent)]
    Secret(#[from] CredentialsError),
    #[error("cannot make throwaway credentials from /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
    #[error("the emulator's listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running emulator. Dropping the handle stops it, as does [`EmulatorHandle::shutdown`].
pub struct EmulatorHandle {
    addr: SocketAddr,
    state: Arc<Emulator>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<bool>>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the upstream to point services at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Re-reads a file secret and uses it for the next request; on error the previous key stays
    /// in use. A secret held in memory is kept as it is.
    pub fn reload(&self) -> Result<(), CredentialsError> {
        let key = self.state.opts.secret.load()?;
        self.state.key.store(Arc::new(key));
        tracing::info!(secret = %self.state.opts.secret.describe(), "emulator: secret key re-read");
        Ok(())
    }

    /// Stops accepting; requests in flight get a second to finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until serving has stopped (after [`EmulatorHandle::shutdown`]).
    pub async fn wait(mut self) -> bool {
        match self.task.take() {
            Some(t) => t.await.unwrap_or(false),
            None => true,
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Starts an emulator on `listener`. Reads the secret once before serving, so a missing or
/// empty key file fails here rather than on the first request.
pub async fn spawn(
    listener: TcpListener,
    opts: EmulatorOptions,
) -> Result<EmulatorHandle, EmulatorError> {
    let key = opts.secret.load()?;
    let addr = listener.local_addr()?;
    let now = (opts.clock)();
    let state = Arc::new(Emulator {
        images: Images::new(opts.import_delay, &opts.account_id, now),
        servers: servers::Servers::default(),
        key: ArcSwap::from_pointee(key),
        ids: Ids::new(),
        addr,
        opts,
    });
    let (tx, mut rx) = watch::channel(false);
    let svc_state = state.clone();
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let state = svc_state.clone();
        async move { Ok::<_, Infallible>(state.handle(req).await) }
    });
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        crate::server::serve(
            listener,
            service,
            &ServerConfig::default(),
            shutdown,
            Duration::from_secs(1),
        )
        .await
    });
    tracing::info!(
        url = %format!("http://{addr}"),
        access_key = %state.opts.access_key,
        account_id = %state.opts.account_id,
        secret = %state.opts.secret.describe(),
        "SCP emulator listening"
    );
    Ok(EmulatorHandle {
        addr,
        state,
        shutdown: tx,
        task: Some(task),
    })
}

/// The standalone emulator's options, and the secret it generated when none was given.
#[derive(Debug)]
pub struct Standalone {
    pub opts: EmulatorOptions,
    /// Throwaway credentials were generated: [`Standalone::env_lines`] prints the secret.
    pub generated: bool,
}

impl Standalone {
    /// What `scp-auth-proxy emulator` prints on stdout once it listens at `url`: `KEY=value`
    /// lines a shell (`set -a; . ./emulator.env`), `docker --env-file` or systemd's
    /// `EnvironmentFile` can read. `SCP_ACCESS_KEY`/`SCP_SECRET_KEY` are the names SDKs read
    /// (the proxy reads `SCP_SECRET_KEY` too); the `SCP_PROXY_` lines configure a proxy in front.
    /// The secret is printed only when it was generated: a given one is not repeated.
    pub fn env_lines(&self, url: &str) -> Zeroizing<String> {
        let o = &self.opts;
        let secret = Zeroizing::new(match (&o.secret, self.generated) {
            (SecretSource::Memory(s), true) => {
                format!("SCP_SECRET_KEY={}", String::from_utf8_lossy(s))
            }
            (src, _) => format!("# SCP_SECRET_KEY: as given ({})", src.describe()),
        });
        let secret = secret.as_str();
        let (ak, acct) = (&o.access_key, &o.account_id);
        Zeroizing::new(format!(
            "# scp-auth-proxy emulator: save these lines (e.g. as emulator.env) and load them with\n\
             # `set -a; . ./emulator.env; set +a`. A proxy in front needs only a config naming\n\
             # [services.virtualserver] and its api_version (and routing.default_service).\n\
             SCP_EMULATOR_URL={url}\n\
             SCP_ACCESS_KEY={ak}\n\
             {secret}\n\
             SCP_ACCOUNT_ID={acct}\n\
             SCP_PROXY_CREDENTIALS__ACCESS_KEY={ak}\n\
             SCP_PROXY_CREDENTIALS__ACCOUNT_ID={acct}\n\
             SCP_PROXY_SERVICES__VIRTUALSERVER__UPSTREAM={url}\n"
        ))
    }
}

/// `bytes` random bytes from /dev/urandom, as lower-case hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    let mut s = String::with_capacity(bytes * 2);
    for b in buf.iter() {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    Ok(s)
}

// ---------------------------------------------------------------- serving

/// Request ids and image ids: a random seed (so two emulators differ) mixed with a counter.
struct Ids {
    seed: u64,
    n: AtomicU64,
}

impl Ids {
    fn new() -> Self {
        let seed = random_hex(8)
            .ok()
            .and_then(|h| u64::from_str_radix(&h, 16).ok())
            .unwrap_or_else(|| {
                let t = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                t ^ u64::from(std::process::id()).rotate_left(32)
            });
        Self {
            seed,
            n: AtomicU64::new(0),
        }
    }

    /// splitmix64 over seed + n * golden ratio: distinct for every n.
    fn next(&self) -> u64 {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A version-4 UUID.
    fn uuid(&self) -> String {
        let (a, b) = (self.next(), self.next());
        let a = (a & !0xF000) | 0x4000;
        let b = (b & !(0b11 << 62)) | (0b10 << 62);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFFF,
            b >> 48,
            b & 0xFFFF_FFFF_FFFF
        )
    }

    fn request_id(&self) -> String {
        format!("req-{:016x}", self.next())
    }
}

/// What the emulator serves. Ids are percent-decoded, as SCP decodes them: `/v1/images/a%20b`
/// is the image `a b`.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Endpoints,
    ListImages,
    CreateImage,
    ShowImage(Cow<'a, str>),
    DeleteImage(Cow<'a, str>),
    ImportImage(Cow<'a, str>),
    AttachSecurityGroup(Cow<'a, str>),
    DetachSecurityGroup(Cow<'a, str>, Cow<'a, str>),
}

impl Endpoint<'_> {
    fn service(&self) -> &'static str {
        match self {
            Endpoint::Endpoints => IAM,
            _ => VIRTUALSERVER,
        }
    }
}

fn route<'a>(method: &Method, path: &'a str) -> Result<Endpoint<'a>, ScpError> {
    let not_allowed = |allowed: &str| {
        ScpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request.MethodNotAllowed",
            "Method Not Allowed",
            format!("{method} is not allowed on {path}; use {allowed}"),
        )
    };
    let segments: Vec<&str> = path
        .strip_prefix("/v1/")
        .map(|p| p.split('/').collect())
        .unwrap_or_default();
    match segments.as_slice() {
        ["endpoints"] => match *method {
            Method::GET => Ok(Endpoint::Endpoints),
            _ => Err(not_allowed("GET")),
        },
        ["images"] => match *method {
            Method::GET => Ok(Endpoint::ListImages),
            Method::POST => Ok(Endpoint::CreateImage),
            _ => Err(not_allowed("GET or POST")),
        },
        ["images", id] if !id.is_empty() => match *method {
            Method::GET => Ok(Endpoint::ShowImage(decode(id))),
            Method::DELETE => Ok(Endpoint::DeleteImage(decode(id))),
            _ => Err(not_allowed("GET or DELETE")),
        },
        ["images", id, "import"] if !id.is_empty() => match *method {
            Method::POST => Ok(Endpoint::ImportImage(decode(id))),
            _ => Err(not_allowed("POST")),
        },
        ["servers", id, "security-groups"] if !id.is_empty() => match *method {
            Method::POST => Ok(Endpoint::AttachSecurityGroup(decode(id))),
            _ => Err(not_allowed("POST")),
        },
        ["servers", id, "security-groups", sg] if !id.is_empty() && !sg.is_empty() => match *method
        {
            Method::DELETE => Ok(Endpoint::DetachSecurityGroup(decode(id), decode(sg))),
            _ => Err(not_allowed("DELETE")),
        },
        _ => Err(ScpError::not_found(
            "Resource.NotFound",
            format!(
                "the emulator has no {path}; it serves GET /, /v1/endpoints, /v1/images, \
                 /v1/images/{{id}}, /v1/images/{{id}}/import and \
                 /v1/servers/{{id}}/security-groups[/{{sg}}]"
            ),
        )),
    }
}

/// One path segment, percent-decoded after the path was split on `/` (so `%2F` stays inside
/// the id). Bytes that do not decode to UTF-8 are replaced: such an id matches no image.
fn decode(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

/// Shared state of one emulator.
struct Emulator {
    opts: EmulatorOptions,
    key: ArcSwap<SigningKey>,
    images: Images,
    servers: servers::Servers,
    ids: Ids,
    addr: SocketAddr,
}

impl Emulator {
    /// `scheme://Host` as the client reached the emulator (for links).
    fn base_url(&self, req: &http::request::Parts) -> String {
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| self.addr.to_string());
        format!("{}://{host}", self.opts.scheme)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        // The proxy sends its request id along; answering with it lets logs be matched.
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| self.ids.request_id(), str::to_owned);
        let result = self.answer(&parts, body).await;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::NOT_ACCEPTABLE {
                    tracing::info!(
                        method = %parts.method,
                        path = %parts.uri.path(),
                        status = e.status.as_u16(),
                        code = e.code,
                        detail = %e.detail,
                        %request_id,
                        "emulator rejected a request"
                    );
                }
                e.to_response(&request_id)
            }
        };
        tracing::debug!(
            method = %parts.method,
            target = %parts.uri,
            status = resp.status().as_u16(),
            %request_id,
            "emulator"
        );
        resp
    }

    async fn answer(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> Result<Response<Body>, ScpError> {
        let now = (self.opts.clock)();
        if parts.method == Method::GET && parts.uri.path() == "/" {
            return Ok(response::json(
                StatusCode::OK,
                &versions::list(VIRTUALSERVER, &self.base_url(parts)),
            ));
        }
        let key = self.key.load();
        Verifier {
            scheme: &self.opts.scheme,
            access_key: &self.opts.access_key,
            account_id: &self.opts.account_id,
            key: &key,
            window: self.opts.window,
        }
        .verify(&parts.method, &parts.uri, &parts.headers, now)
        .map_err(|e| e.to_error())?;

        let endpoint = route(&parts.method, parts.uri.path())?;
        versions::check(
            &parts.headers,
            endpoint.service(),
            parts.method.as_str(),
            parts.uri.path(),
            Date::of(now),
        )
        .map_err(|e| e.to_error())?;

        match endpoint {
            Endpoint::Endpoints => Ok(response::json(StatusCode::OK, &self.endpoints(parts))),
            Endpoint::ListImages => Ok(response::json(
                StatusCode::OK,
                &self.images.list(parts.uri.query())?,
            )),
            Endpoint::ShowImage(id) => Ok(response::json(StatusCode::OK, &self.images.show(&id)?)),
            Endpoint::DeleteImage(id) => {
                self.images.delete(&id)?;
                Ok(response::empty(StatusCode::NO_CONTENT))
            }
            Endpoint::CreateImage => {
                let body = read_json(body).await?;
                let created =
                    self.images
                        .create(&body, self.ids.uuid(), &self.opts.account_id, now)?;
                Ok(response::json(StatusCode::CREATED, &created))
            }
            Endpoint::ImportImage(id) => {
                let body = read_json(body).await?;
                self.images.import(&id, &body, now)?;
                Ok(response::empty(StatusCode::ACCEPTED))
            }
            Endpoint::AttachSecurityGroup(id) => {
                let body = read_json(body).await?;
                self.servers.attach(&id, &body)?;
                Ok(response::empty(StatusCode::ACCEPTED))
            }
            Endpoint::DetachSecurityGroup(id, sg) => {
                self.servers.detach(&id, &sg)?;
                Ok(response::empty(StatusCode::ACCEPTED))
            }
        }
    }

    fn endpoints(&self, parts: &http::request::Parts) -> serde_json::Value {
        let url = self.base_url(parts);
        let region = &self.opts.region;
        let entry = |name: &str, url: String| {
            serde_json::json!({
                "region": region,
                "service_type": format!("scp-{name}"),
                "service_name": name,
                "url": url,
            })
        };
        // Itself for the services it emulates; like SCP's, the list also names services a
        // client may not use (here with their real URLs, which the emulator does not serve).
        let mut endpoints: Vec<_> = [VIRTUALSERVER, IAM]
            .into_iter()
            .map(|name| entry(name, url.clone()))
            .collect();
        for name in NOT_EMULATED {
            endpoints.push(entry(
                name,
                format!("https://{name}.{region}.e.samsungsdscloud.com"),
            ));
        }
        serde_json::json!({ "endpoints": endpoints })
    }
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]; an empty body reads as `null`.
async fn read_json(body: Incoming) -> Result<serde_json::Value, ScpError> {
    let bytes: Bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ScpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request.BodyTooLarge",
                "Payload Too Large",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            ))
        }
        Err(e) => {
            return Err(ScpError::bad_request(
                "Request.InvalidBody",
                format!("the request body could not be read: {e}"),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ScpError::bad_request(
            "Request.InvalidBody",
            format!("the request body is not JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = Method::GET;
        assert_eq!(route(&get, "/v1/endpoints"), Ok(Endpoint::Endpoints));
        assert_eq!(route(&get, "/v1/images"), Ok(Endpoint::ListImages));
        assert_eq!(
            route(&Method::POST, "/v1/images"),
            Ok(Endpoint::CreateImage)
        );
        let id = |s: &'static str| Cow::Borrowed(s);
        // Split first, then decoded: %2F is part of the id, not a separator.
        assert_eq!(
            route(&get, "/v1/images/a%2Fb"),
            Ok(Endpoint::ShowImage(id("a/b")))
        );
        assert_eq!(
            route(&get, "/v1/images/a%20b"),
            Ok(Endpoint::ShowImage(id("a b")))
        );
        assert_eq!(
            route(&get, "/v1/images/%EC%9A%B0"),
            Ok(Endpoint::ShowImage(id("우")))
        );
        assert_eq!(
            route(&get, "/v1/images/%FF"),
            Ok(Endpoint::ShowImage(id("\u{FFFD}")))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/images/x"),
            Ok(Endpoint::DeleteImage(id("x")))
        );
        assert_eq!(
            route(&Method::POST, "/v1/images/x%2D1/import"),
            Ok(Endpoint::ImportImage(id("x-1")))
        );
        assert_eq!(
            route(&get, "/v1/images/x/import").unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        for missing in [
            "/v1/images/",
            "/v1/servers",
            "/v2/images",
            "/x",
            "/v1/images//import",
        ] {
            assert_eq!(
                route(&get, missing).unwrap_err().status,
                StatusCode::NOT_FOUND,
                "{missing}"
            );
        }
        assert_eq!(
            route(&Method::POST, "/v1/servers/s/security-groups"),
            Ok(Endpoint::AttachSecurityGroup(id("s")))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/servers/s/security-groups/g%201"),
            Ok(Endpoint::DetachSecurityGroup(id("s"), id("g 1")))
        );
        assert_eq!(Endpoint::Endpoints.service(), "iam");
        assert_eq!(Endpoint::ListImages.service(), "virtualserver");
    }

    #[test]
    fn ids_are_distinct_v4_uuids() {
        let ids = Ids::new();
        let a = ids.uuid();
        let b = ids.uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert!(ids.request_id().starts_with("req-"));
    }

    #[test]
    fn random_hex_reads_urandom() {
        let a = random_hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(16).unwrap());
    }

    #[test]
    fn secret_source_never_debugs_the_secret() {
        let s = SecretSource::memory(b"sentinel-SECRET".to_vec());
        assert_eq!(format!("{s:?}"), "Memory(<redacted>)");
        let opts = EmulatorOptions::new("ak", s);
        assert!(!format!("{opts:?}").contains("sentinel"));
        assert_eq!(opts.scheme, "http");
        assert_eq!(opts.window, Duration::from_secs(900));
    }

    #[test]
    fn file_secret_is_cleaned_and_reported_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let src = SecretSource::File(path.clone());
        let err = src.load().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "abc\n").unwrap();
        let key = src.load().unwrap();
        let input = crate::signer::SignInput {
            method: "GET",
            url_parts: &["http://h/"],
            timestamp: "1",
            access_key: "ak",
            account_id: "",
            client_type: "Openapi",
        };
        assert_eq!(
            key.sign(&input).as_str(),
            crate::signer::sign(b"abc", "GET", "http://h/", "1", "ak", "", "Openapi")
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(src.load().is_err());
    }
}
