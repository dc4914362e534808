//! Typed configuration, merged from layers and validated once at load.
//!
//! Layers, lowest first: built-in defaults (serde defaults below) < files < environment
//! (`SCP_PROXY_` prefix, `__` between nested keys) < command-line flags. Unknown keys in files
//! are errors; environment variables that match no key are ignored, because Kubernetes injects
//! `SCP_PROXY_PORT`-style service links into every pod. Every error names the key and, where
//! the value came from a file, that file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Errors found while loading configuration or credentials. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value of the wrong type or an unknown key. Shown by [`describe_load`], which never
    /// prints the offending value: a secret pasted into the wrong place stays out of the log.
    #[error("{}", describe_load(.0))]
    Load(Box<figment::Error>),
    /// The file is not valid TOML. Only the position and what the parser expected are shown,
    /// never the line itself (it may be a secret, e.g. `check-config --config <secret file>`).
    #[error("config file {} is not valid TOML: line {line}, column {column}: {expected} (the line is not shown: it may hold a secret)", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        expected: String,
    },
    #[error("config file {path} could not be read: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{key}`{origin}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Load(Box::new(e))
    }
}

/// Where configuration files come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `--config FILE`: that file alone.
    File(PathBuf),
    /// `--profile NAME [--config-dir DIR]`: `DIR/default.toml` then `DIR/NAME.toml`.
    Profile { name: String, dir: PathBuf },
}

impl Source {
    /// The files this source reads (or would, once they exist), for watching.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Source::File(p) => vec![p.clone()],
            Source::Profile { name, dir } => {
                vec![dir.join("default.toml"), dir.join(format!("{name}.toml"))]
            }
        }
    }
}

/// Values set on the command line; the highest layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
}

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    routing: RoutingConfig,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    emulator: EmulatorConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    forward_proxy: ForwardProxyConfig,
}

/// `[telemetry]`: span export.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector (`http://127.0.0.1:4318`): spans go to `{endpoint}/v1/traces` (or
    /// to the URL as written when it has a path). Unset: no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "scp-auth-proxy".into(),
        }
    }
}

impl TelemetryConfig {
    /// The URL spans are POSTed to, when export is on (validated at load).
    pub fn traces_url(&self) -> Option<http::Uri> {
        let e = self.otlp_endpoint.as_deref()?;
        let uri: http::Uri = e.parse().ok()?;
        if uri.path() == "/" {
            format!("{}/v1/traces", e.trim_end_matches('/'))
                .parse()
                .ok()
        } else {
            Some(uri)
        }
    }
}

/// `[audit]`: where the per-request audit records go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Append records as JSON lines to this file instead of the log (target `audit`).
    pub file: Option<PathBuf>,
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Data plane: `HOST:PORT`, or `unix:/ABSOLUTE/PATH` for a Unix socket. Loopback by
    /// default: only the pod (or laptop) itself may send.
    pub listen: ListenAddr,
    /// Permissions of the Unix socket file (`server.listen = "unix:..."`), octal; default
    /// "0600" (the proxy's user only).
    #[serde(with = "octal_mode", skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<u32>,
    /// Client connections open at once; at the cap, accepting pauses. Default: sized from the
    /// file-descriptor limit (raised to its hard limit at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Keep accepting for this long after SIGTERM, while Kubernetes removes the pod from
    /// endpoints.
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    /// Requests handled at once; above it: 503 `overloaded` with Retry-After.
    pub max_concurrent_requests: usize,
    /// Total size of a request's headers.
    pub max_header_bytes: usize,
    /// Time a client may take to send its request headers.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections from clients are closed after this.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Largest body read whole on routes the proxy inspects (image import).
    pub max_inspected_body_bytes: usize,
    /// At start of serving, read each service's live version list (unsigned `GET /`, 2s
    /// timeout, in the background) and warn where it disagrees with the built-in catalog.
    pub check_live_versions: bool,
    /// `POST /quitquitquit` on the admin listener starts the graceful drain (for Jobs whose
    /// main container has ended). Off by default: anyone who can reach the admin port could
    /// stop the sidecar.
    pub enable_quit: bool,
    /// A header every data-plane request must carry (e.g. "X-Scp-Proxy"), else 412: a URL
    /// fetch forged against loopback (SSRF) cannot add it. Not forwarded.
    pub require_header: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080))),
            socket_mode: None,
            max_connections: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            shutdown_grace: Duration::from_secs(25),
            shutdown_delay: Duration::ZERO,
            max_concurrent_requests: 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_inspected_body_bytes: 64 * 1024,
            check_live_versions: true,
            enable_quit: false,
            require_header: None,
        }
    }
}

/// Where the data plane listens: a TCP address, or a Unix socket (`unix:/ABSOLUTE/PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                // The value is not quoted back: errors never echo file content.
                return Err(
                    "a Unix socket needs an absolute path, e.g. unix:/run/scp-auth-proxy/proxy.sock"
                        .into(),
                );
            }
            return Ok(ListenAddr::Unix(path));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| "is not HOST:PORT (e.g. 127.0.0.1:8080) or unix:/ABSOLUTE/PATH".into())
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Octal file modes written as strings ("0660").
mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => Ok(Some(m)),
            // The value is not quoted back: errors never echo file content.
            _ => Err(serde::de::Error::custom(
                "is not an octal file mode such as \"0660\"",
            )),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(m) => s.serialize_str(&format!("{m:04o}")),
            None => s.serialize_none(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawCredentials {
    /// How often key files are checked for changes ("0s": only on SIGHUP).
    #[serde(with = "duration")]
    watch_interval: Duration,
    access_key: Option<String>,
    access_key_file: Option<PathBuf>,
    secret_key_file: Option<PathBuf>,
    account_id: String,
    client_type: String,
}

impl Default for RawCredentials {
    fn default() -> Self {
        Self {
            watch_interval: Duration::from_secs(2),
            access_key: None,
            access_key_file: None,
            secret_key_file: None,
            account_id: String::new(),
            client_type: "Openapi".into(),
        }
    }
}

/// `[routing]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Service for paths whose first segment names no configured service.
    pub default_service: Option<String>,
    /// Rewrite the IAM endpoint catalog (`GET /v1/endpoints`) so that the URLs of configured
    /// services point at the proxy.
    pub rewrite_endpoint_catalog: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_service: None,
            rewrite_endpoint_catalog: true,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default = "default_timeout", with = "duration")]
    timeout: Duration,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    allow_unsupported_version: bool,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default = "default_body_idle_timeout", with = "duration")]
    body_idle_timeout: Duration,
    #[serde(default = "default_max_idle_connections")]
    max_idle_connections: usize,
    /// `"METHOD /path" = "MAJOR.MINOR"`.
    #[serde(default)]
    operation_versions: BTreeMap<String, String>,
    #[serde(default)]
    intercept: Vec<String>,
    /// This service's share of requests in flight (a bulkhead), beside the global limit.
    #[serde(default)]
    max_concurrent_requests: Option<usize>,
}

/// `[services.NAME.retry]`: re-signed retries of failed attempts.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// Retries may add at most this share of the service's requests (plus a small reserve).
    pub budget_percent: u32,
    /// The first retry waits between half of this and this; each next one twice as long.
    #[serde(with = "duration")]
    pub backoff: Duration,
    /// Operations with other methods than GET, HEAD and OPTIONS that may be retried too, as
    /// allowlist rules (`"POST /v1/images/*/import"`).
    pub operations: Vec<String>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            budget_percent: 20,
            backoff: Duration::from_millis(50),
            operations: Vec::new(),
        }
    }
}

/// Upper bound for `retry.max_attempts`.
const MAX_ATTEMPTS: u32 = 5;

/// Upper bound for every duration setting.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Upper bound for `server.max_concurrent_requests` (tokio's semaphore takes far more, but no
/// sidecar needs more than this).
const MAX_CONCURRENT: usize = 1_000_000;

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_body_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_idle_connections() -> usize {
    32
}

/// `[emulator]`: the built-in SCP emulator, for the `dev` profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorConfig {
    /// Start the emulator inside the proxy on a loopback port and send every service to it,
    /// with throwaway credentials shared in memory.
    pub in_process: bool,
    /// Where the in-process emulator listens (port 0: any free port).
    pub listen: SocketAddr,
    /// How long an import takes to go Queued -> Importing -> Active.
    #[serde(with = "duration")]
    pub import_delay: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            in_process: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            import_delay: Duration::from_secs(3),
        }
    }
}

/// `[forward_proxy]`: the opt-in HTTP forward-proxy listener (`HTTPS_PROXY` for unchanged
/// tools). Off unless `listen` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardProxyConfig {
    /// Where the forward proxy listens, e.g. "127.0.0.1:8443"; unset: no forward proxy.
    pub listen: Option<SocketAddr>,
    /// PEM CA certificate that signs the per-host leaf certificates (with `ca_key_file`).
    pub ca_cert_file: Option<PathBuf>,
    /// PEM PKCS#8 private key of `ca_cert_file`; must not be readable by group or others.
    pub ca_key_file: Option<PathBuf>,
    /// Where to write the CA certificate (public part only) at start.
    pub ca_cert_out: Option<PathBuf>,
}

// ---------------------------------------------------------------- validated

/// The validated configuration the proxy runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub credentials: CredentialsConfig,
    pub routing: RoutingConfig,
    pub services: Vec<ServiceConfig>,
    pub emulator: EmulatorConfig,
    pub audit: AuditConfig,
    pub telemetry: TelemetryConfig,
    pub forward_proxy: ForwardProxyConfig,
    /// Human-readable list of the files that were read, for messages.
    pub sources: Vec<PathBuf>,
}

/// `[credentials]`, validated. The secret itself is never part of `Config`.
#[derive(Clone, Debug)]
pub struct CredentialsConfig {
    /// How often key files are checked for changes (zero: only on SIGHUP).
    pub watch_interval: Duration,
    pub access_key: Option<String>,
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    pub account_id: String,
    pub client_type: String,
}

/// One `[services.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub upstream: Upstream,
    pub api_version: String,
    pub region: Option<String>,
    /// From the end of the request body to the response headers.
    pub timeout: Duration,
    /// A request or response body that moves no byte for this long fails.
    pub body_idle_timeout: Duration,
    /// Idle pooled connections kept to the upstream.
    pub max_idle_connections: usize,
    pub ca_file: Option<PathBuf>,
    pub allow: Option<Vec<String>>,
    pub allow_unsupported_version: bool,
    pub retry: RetryConfig,
    /// `[services.NAME.operation_versions]`, in the order they are tried: the first whose rule
    /// matches a request gives its pin; none: `api_version`.
    pub operation_versions: Vec<OperationVersion>,
    /// Extra public authorities (`host:port`, lower-case) the forward proxy intercepts for this
    /// service, besides its upstream's own.
    pub intercept: Vec<http::uri::Authority>,
    /// At most this many requests to this service at once (None: only the global limit).
    pub max_concurrent_requests: Option<usize>,
}

/// One `[services.NAME.operation_versions]` entry: requests matching `rule` are pinned to
/// `version` instead of the service's `api_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationVersion {
    pub rule: crate::policy::allowlist::Rule,
    /// `MAJOR.MINOR`
    pub version: String,
}

impl ServiceConfig {
    /// The pin that applies to `method` on the service-relative raw `path`: the first matching
    /// operation pin, else the service's (`None`).
    pub fn operation_pin(&self, method: &str, path: &str) -> Option<&OperationVersion> {
        self.operation_versions
            .iter()
            .find(|o| o.rule.matches(method, path))
    }

    /// The config key a pin comes from, for messages: `services.NAME.api_version` or
    /// `services.NAME.operation_versions."METHOD /path"`.
    pub fn pin_key(&self, op: Option<&OperationVersion>) -> String {
        self.pin_of(op).key()
    }
}

/// `scheme://authority`, kept exactly as written: the signature covers these bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// `scheme://authority`
    pub base: String,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} is not a URL; write it as https://HOST[:PORT]"))?;
        let scheme = match scheme {
            "https" => http::uri::Scheme::HTTPS,
            "http" => http::uri::Scheme::HTTP,
            other => {
                return Err(format!(
                    "scheme {other:?} is not supported; use https (or http for a local emulator)"
                ))
            }
        };
        let authority_str = rest.strip_suffix('/').unwrap_or(rest);
        if authority_str.is_empty() || authority_str.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{s:?} must be scheme://host[:port] only, with no path, query or user info"
            ));
        }
        let authority: http::uri::Authority = authority_str
            .parse()
            .map_err(|e| format!("{authority_str:?} is not a valid host[:port]: {e}"))?;
        // `Authority` accepts any text after the last ':'; a bad port would be signed and sent
        // in Host while the connection silently used the default one.
        let has_port = authority_str
            .rsplit_once(':')
            .is_some_and(|(_, tail)| !tail.contains(']'));
        if has_port && authority.port_u16().is_none_or(|p| p == 0) {
            return Err(format!(
                "{authority_str:?} has an invalid port; use 1..65535"
            ));
        }
        Ok(Self {
            base: format!("{scheme}://{authority_str}"),
            scheme,
            authority,
        })
    }

    /// `<service>.<region>.<env>.samsungsdscloud.com` -> (region, env); global services
    /// (`iam.<env>...`) give no region.
    pub fn scp_region_env(&self) -> (Option<String>, Option<String>) {
        let host = self.authority.host();
        let Some(prefix) = host.strip_suffix(".samsungsdscloud.com") else {
            return (None, None);
        };
        let labels: Vec<&str> = prefix.split('.').collect();
        match labels.as_slice() {
            [_service, region, env] => (Some((*region).into()), Some((*env).into())),
            [_service, env] => (None, Some((*env).into())),
            _ => (None, None),
        }
    }

    pub fn is_loopback(&self) -> bool {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

impl ServiceConfig {
    /// The public authorities (`host:port`) the forward proxy accepts CONNECT for: the
    /// upstream's own (port made explicit) and `intercept`.
    pub fn public_authorities(&self) -> Vec<String> {
        let up = &self.upstream;
        let port = up
            .authority
            .port_u16()
            .unwrap_or(if up.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            });
        let mut all = vec![format!(
            "{}:{port}",
            up.authority.host().to_ascii_lowercase()
        )];
        for a in &self.intercept {
            let a = a.as_str().to_owned();
            if !all.contains(&a) {
                all.push(a);
            }
        }
        all
    }

    /// The SCP environment (`s`, `g`, `e`) when the upstream host tells it.
    pub fn env(&self) -> Option<String> {
        self.upstream.scp_region_env().1
    }

    /// The service's own pin (`api_version`) as the lifecycle checks see it.
    pub fn pin(&self) -> crate::policy::lifecycle::Pin<'_> {
        self.pin_of(None)
    }

    /// Every pin, in the order a request tries them: operation pins, then the service's.
    pub fn pins(&self) -> impl Iterator<Item = crate::policy::lifecycle::Pin<'_>> {
        self.operation_versions
            .iter()
            .map(|o| self.pin_of(Some(o)))
            .chain(std::iter::once(self.pin()))
    }

    /// `op`'s pin (`None`: the service's own) as the lifecycle checks see it.
    pub fn pin_of<'a>(
        &'a self,
        op: Option<&'a OperationVersion>,
    ) -> crate::policy::lifecycle::Pin<'a> {
        crate::policy::lifecycle::Pin {
            service: &self.name,
            version: op.map_or(&self.api_version, |o| &o.version),
            waived: self.allow_unsupported_version,
            upstream: &self.upstream.base,
            op: op.map(|o| &o.rule),
            has_operation_pins: !self.operation_versions.is_empty(),
        }
    }
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Points every service at `base` (the in-process emulator).
    pub fn redirect_upstreams(&mut self, base: &str) -> Result<(), String> {
        let up = Upstream::parse(base)?;
        for s in &mut self.services {
            s.upstream = up.clone();
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- loading

/// Builds the layered figment for `source`.
pub fn figment(
    source: &Source,
    overrides: &Overrides,
) -> Result<(Figment, Vec<PathBuf>), ConfigError> {
    let mut fig = Figment::new();
    let mut files = Vec::new();
    match source {
        Source::File(path) => {
            require_file(path)?;
            check_syntax(path)?;
            fig = fig.merge(Toml::file_exact(path));
            files.push(path.clone());
        }
        Source::Profile { name, dir } => {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(ConfigError::Invalid {
                    key: "--profile".into(),
                    origin: String::new(),
                    message: format!(
                        "{name:?} is not a profile name; use a file stem in {}",
                        dir.display()
                    ),
                });
            }
            let default = dir.join("default.toml");
            if default.exists() {
                check_syntax(&default)?;
                fig = fig.merge(Toml::file_exact(&default));
                files.push(default);
            }
            let profile = dir.join(format!("{name}.toml"));
            require_file(&profile)?;
            check_syntax(&profile)?;
            fig = fig.merge(Toml::file_exact(&profile));
            files.push(profile);
        }
    }
    fig = fig
        .merge(crate::env::config_overrides(is_known_key))
        .merge(Serialized::default("server", overrides));
    Ok((fig, files))
}

fn require_file(path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| ConfigError::File {
            path: path.to_path_buf(),
            source,
        })
}

/// Parses `path` as TOML before figment does, so a syntax error is reported by position only:
/// figment's (and toml's) own message quotes the offending line.
fn check_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let text = zeroize::Zeroizing::new(text);
    let syntax = |offset: usize, expected: String| {
        let (line, column) = line_column(&text, offset);
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            expected,
        }
    };
    let Ok(utf8) = std::str::from_utf8(&text) else {
        let offset = std::str::from_utf8(&text)
            .err()
            .map_or(0, |e| e.valid_up_to());
        return Err(syntax(offset, "UTF-8 text".into()));
    };
    match toml::from_str::<toml::Table>(utf8) {
        Ok(_) => Ok(()),
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            Err(syntax(offset, redact_toml_message(e.message())))
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

/// The parser's message on one line, with every quoted fragment longer than a token (such as
/// a duplicated key or an unknown escape) left out: only punctuation the parser expected stays.
pub(crate) fn redact_toml_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for (i, part) in m.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else if part.chars().count() <= 2 && !part.chars().any(|c| c.is_alphanumeric()) {
            out.push('`');
            out.push_str(part);
            out.push('`');
        } else {
            out.push_str("`…`");
        }
    }
    let out = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if out.is_empty() {
        "valid TOML".into()
    } else {
        out
    }
}

/// figment's error without the values it would quote: the key, where it came from, and what
/// kind of value was expected.
fn describe_load(e: &figment::Error) -> String {
    use figment::error::{Actual, Kind};
    let kind_of = |a: &Actual| -> &'static str {
        match a {
            Actual::Bool(_) => "a boolean",
            Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
            Actual::Float(_) => "a float",
            Actual::Char(_) | Actual::Str(_) => "a string",
            Actual::Bytes(_) => "bytes",
            Actual::Unit | Actual::Option => "nothing",
            Actual::Seq => "an array",
            Actual::Map => "a table",
            _ => "another kind of value",
        }
    };
    let mut lines = Vec::new();
    for err in e.clone() {
        let what = match &err.kind {
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                format!("expected {expected}, found {}", kind_of(actual))
            }
            Kind::Message(m) if m.contains('\n') => {
                "could not be parsed (the text is not shown: it may hold a secret)".into()
            }
            Kind::UnknownVariant(_, expected) => {
                format!("unknown value; expected one of {}", expected.join(", "))
            }
            Kind::Unsupported(actual) => format!("unsupported value: {}", kind_of(actual)),
            Kind::UnsupportedKey(actual, expected) => {
                format!("unsupported key: {}, need {expected}", kind_of(actual))
            }
            // Key names, lengths and our own messages (which never quote values).
            other => other.to_string(),
        };
        let key = err.path.join(".");
        let origin = match &err.metadata {
            Some(md) => match &md.source {
                Some(src) => format!(" (in {src})"),
                None => format!(" (from {})", md.name),
            },
            None => String::new(),
        };
        lines.push(if key.is_empty() {
            format!("configuration{origin}: {what}")
        } else {
            format!("`{key}`{origin}: {what}")
        });
    }
    lines.join("\n")
}

/// Environment keys the proxy knows (lower-cased and dotted, as figment presents them).
fn is_known_key(key: &str) -> bool {
    const SECTIONS: &[(&str, &[&str])] = &[
        (
            "server",
            &[
                "listen",
                "socket_mode",
                "max_connections",
                "admin_listen",
                "shutdown_grace",
                "shutdown_delay",
                "max_concurrent_requests",
                "max_header_bytes",
                "header_read_timeout",
                "idle_timeout",
                "max_inspected_body_bytes",
                "check_live_versions",
                "enable_quit",
                "require_header",
            ],
        ),
        (
            "credentials",
            &[
                "access_key",
                "access_key_file",
                "secret_key_file",
                "account_id",
                "client_type",
                "watch_interval",
            ],
        ),
        ("routing", &["default_service", "rewrite_endpoint_catalog"]),
        ("emulator", &["in_process", "listen", "import_delay"]),
        ("audit", &["file"]),
        ("telemetry", &["otlp_endpoint", "service_name"]),
        (
            "forward_proxy",
            &["listen", "ca_cert_file", "ca_key_file", "ca_cert_out"],
        ),
    ];
    const SERVICE_KEYS: &[&str] = &[
        "upstream",
        "api_version",
        "region",
        "timeout",
        "ca_file",
        "allow",
        "allow_unsupported_version",
        "retry",
        "body_idle_timeout",
        "max_idle_connections",
        "operation_versions",
        "intercept",
        "max_concurrent_requests",
    ];
    const RETRY_KEYS: &[&str] = &["max_attempts", "budget_percent", "backoff", "operations"];
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["services", name, field] => !name.is_empty() && SERVICE_KEYS.contains(field),
        ["services", name, "retry", field] => !name.is_empty() && RETRY_KEYS.contains(field),
        [section, field] => SECTIONS
            .iter()
            .any(|(s, fields)| s == section && fields.contains(field)),
        _ => false,
    }
}

/// Loads and validates configuration (but not the secret: see `credentials`).
pub fn load(source: &Source, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (fig, files) = figment(source, overrides)?;
    from_figment(&fig, files)
}

pub(crate) fn from_figment(fig: &Figment, sources: Vec<PathBuf>) -> Result<Config, ConfigError> {
    let raw: RawConfig = fig.extract()?;
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.to_string(),
        origin: origin_of(fig, key),
        message,
    };

    if raw.services.is_empty() {
        return Err(invalid(
            "services",
            "no service is configured; add e.g. [services.virtualserver] with upstream and api_version".into(),
        ));
    }
    let in_process = raw.emulator.in_process;
    let mut services = Vec::with_capacity(raw.services.len());
    for (name, s) in raw.services {
        let key = |field: &str| format!("services.{name}.{field}");
        if !is_service_name(&name) {
            return Err(invalid(
                &format!("services.{name}"),
                "service names are lower-case letters, digits, '-' and '_'".into(),
            ));
        }
        let upstream = match (&s.upstream, in_process) {
            (Some(u), _) => Upstream::parse(u).map_err(|m| invalid(&key("upstream"), m))?,
            // The in-process emulator replaces it at start.
            (None, true) => Upstream::parse("http://127.0.0.1:1").map_err(|m| invalid(&key("upstream"), m))?,
            (None, false) => {
                return Err(invalid(
                    &key("upstream"),
                    format!("missing; set it to the service endpoint, e.g. https://{name}.kr-west1.e.samsungsdscloud.com"),
                ))
            }
        };
        let api_version = s.api_version.ok_or_else(|| {
            invalid(
                &key("api_version"),
                "missing; pin the API version as \"MAJOR.MINOR\", e.g. \"1.3\"".into(),
            )
        })?;
        if !is_major_minor(&api_version) {
            return Err(invalid(
                &key("api_version"),
                format!("{api_version:?} is not MAJOR.MINOR (e.g. \"1.3\")"),
            ));
        }
        let region = s.region.or_else(|| upstream.scp_region_env().0);
        if let Some(r) = &region {
            if r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid(
                    &key("region"),
                    format!("{r:?} is not a region such as kr-west1"),
                ));
            }
        }
        if s.timeout.is_zero() || s.timeout > MAX_DURATION {
            return Err(invalid(
                &key("timeout"),
                "must be more than 0s and at most 1day".into(),
            ));
        }
        if s.body_idle_timeout.is_zero() || s.body_idle_timeout > MAX_DURATION {
            return Err(invalid(
                &key("body_idle_timeout"),
                "must be more than 0s and at most 1day".into(),
            ));
        }
        if s.max_idle_connections > MAX_CONCURRENT {
            return Err(invalid(
                &key("max_idle_connections"),
                format!("must be at most {MAX_CONCURRENT}"),
            ));
        }
        if let Some(ca) = &s.ca_file {
            require_file(ca).map_err(|e| invalid(&key("ca_file"), e.to_string()))?;
        }
        if let Some(rules) = &s.allow {
            for r in rules {
                crate::policy::allowlist::Rule::parse(r).map_err(|m| invalid(&key("allow"), m))?;
            }
        }
        let r = &s.retry;
        if !(1..=MAX_ATTEMPTS).contains(&r.max_attempts) {
            return Err(invalid(
                &key("retry.max_attempts"),
                format!("must be between 1 (no retries) and {MAX_ATTEMPTS}"),
            ));
        }
        if r.budget_percent > 100 {
            return Err(invalid(
                &key("retry.budget_percent"),
                "must be between 0 and 100".into(),
            ));
        }
        if r.backoff > Duration::from_secs(10) {
            return Err(invalid(&key("retry.backoff"), "must be at most 10s".into()));
        }
        for op in &r.operations {
            crate::policy::allowlist::Rule::parse(op)
                .map_err(|m| invalid(&key("retry.operations"), m))?;
        }
        let operation_versions = operation_versions(&s.operation_versions, s.allow.as_deref())
            .map_err(|(op, m)| {
                let k = match op {
                    Some(op) => format!("{}.\"{op}\"", key("operation_versions")),
                    None => key("operation_versions"),
                };
                ConfigError::Invalid {
                    key: k,
                    origin: origin_of(fig, &key("operation_versions")),
                    message: m,
                }
            })?;
        let mut intercept = Vec::with_capacity(s.intercept.len());
        for a in &s.intercept {
            intercept.push(parse_intercept(a).map_err(|m| invalid(&key("intercept"), m))?);
        }
        if let Some(n) = s.max_concurrent_requests {
            if !(1..=MAX_CONCURRENT).contains(&n) {
                return Err(invalid(
                    &key("max_concurrent_requests"),
                    format!("must be between 1 and {MAX_CONCURRENT}"),
                ));
            }
        }
        services.push(ServiceConfig {
            intercept,
            name,
            upstream,
            api_version,
            region,
            timeout: s.timeout,
            body_idle_timeout: s.body_idle_timeout,
            max_idle_connections: s.max_idle_connections,
            ca_file: s.ca_file,
            allow: s.allow,
            allow_unsupported_version: s.allow_unsupported_version,
            retry: s.retry,
            operation_versions,
            max_concurrent_requests: s.max_concurrent_requests,
        });
    }
    if let Some(d) = &raw.routing.default_service {
        if !services.iter().any(|s| &s.name == d) {
            return Err(invalid(
                "routing.default_service",
                format!(
                    "{d:?} is not a configured service (configured: {})",
                    names(&services)
                ),
            ));
        }
    }
    // One intercepted authority names one service: the forward proxy routes by it.
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for svc in &services {
        for a in &svc.intercept {
            if let Some(other) = owners.insert(a.as_str(), &svc.name) {
                return Err(invalid(
                    &format!("services.{}.intercept", svc.name),
                    format!("{a} is also in services.{other}.intercept; one authority can name one service"),
                ));
            }
        }
    }
    let fp = raw.forward_proxy;
    if fp.ca_cert_file.is_some() != fp.ca_key_file.is_some() {
        return Err(invalid(
            "forward_proxy.ca_key_file",
            "set both forward_proxy.ca_cert_file and forward_proxy.ca_key_file, or neither (a CA is then generated in memory)".into(),
        ));
    }
    for (k, f) in [
        ("forward_proxy.ca_cert_file", &fp.ca_cert_file),
        ("forward_proxy.ca_key_file", &fp.ca_key_file),
    ] {
        if let Some(f) = f {
            require_file(f).map_err(|e| invalid(k, e.to_string()))?;
        }
    }
    let server = raw.server;
    if !(1..=MAX_CONCURRENT).contains(&server.max_concurrent_requests) {
        return Err(invalid(
            "server.max_concurrent_requests",
            format!("must be between 1 and {MAX_CONCURRENT}"),
        ));
    }
    if let Some(n) = server.max_connections {
        if !(1..=MAX_CONCURRENT).contains(&n) {
            return Err(invalid(
                "server.max_connections",
                format!("must be between 1 and {MAX_CONCURRENT}"),
            ));
        }
    }
    if server.socket_mode.is_some() && server.listen.tcp().is_some() {
        return Err(invalid(
            "server.socket_mode",
            "applies only to a Unix socket (server.listen = \"unix:/PATH\")".into(),
        ));
    }
    // Zero would close every connection at once; beyond a day is a typo, and huge values
    // overflow the clock.
    for (key, value, min) in [
        (
            "server.header_read_timeout",
            server.header_read_timeout,
            Duration::from_secs(1),
        ),
        (
            "server.idle_timeout",
            server.idle_timeout,
            Duration::from_secs(1),
        ),
        (
            "server.shutdown_grace",
            server.shutdown_grace,
            Duration::ZERO,
        ),
        (
            "server.shutdown_delay",
            server.shutdown_delay,
            Duration::ZERO,
        ),
    ] {
        if value < min || value > MAX_DURATION {
            return Err(invalid(
                key,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
    }
    if let Some(h) = &server.require_header {
        if h.is_empty() || http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(invalid(
                "server.require_header",
                "must be a header name such as \"X-Scp-Proxy\"".into(),
            ));
        }
    }
    if server.max_header_bytes < 1024 {
        return Err(invalid(
            "server.max_header_bytes",
            "must be at least 1024".into(),
        ));
    }
    let c = raw.credentials;
    if c.watch_interval > MAX_DURATION {
        return Err(invalid(
            "credentials.watch_interval",
            "must be at most 1day (\"0s\" turns file watching off)".into(),
        ));
    }
    // Signed as written but trimmed by receivers: surrounding spaces would fail every request.
    let optional_ak = c.access_key.as_deref().unwrap_or("");
    for (key, value) in [
        ("credentials.client_type", c.client_type.as_str()),
        ("credentials.account_id", c.account_id.as_str()),
        ("credentials.access_key", optional_ak),
    ] {
        if value.trim() != value {
            return Err(invalid(
                key,
                "has leading or trailing spaces; remove them".into(),
            ));
        }
    }
    if c.client_type.is_empty() || !is_header_safe(&c.client_type) {
        return Err(invalid(
            "credentials.client_type",
            "must be a non-empty printable ASCII string".into(),
        ));
    }
    if !is_header_safe(&c.account_id) {
        return Err(invalid(
            "credentials.account_id",
            "must be printable ASCII".into(),
        ));
    }
    if let Some(ak) = &c.access_key {
        if !is_header_safe(ak) || ak.is_empty() {
            return Err(invalid(
                "credentials.access_key",
                "must be a non-empty printable ASCII string".into(),
            ));
        }
    }
    if let Some(e) = &raw.telemetry.otlp_endpoint {
        let ok = e
            .parse::<http::Uri>()
            .ok()
            .filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.query().is_none()
            })
            .is_some();
        if !ok {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                format!("{e:?} is not an http(s) URL; write the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318"),
            ));
        }
    }
    if raw.telemetry.service_name.is_empty() || raw.telemetry.service_name.len() > 128 {
        return Err(invalid(
            "telemetry.service_name",
            "must be 1 to 128 characters".into(),
        ));
    }
    Ok(Config {
        server,
        credentials: CredentialsConfig {
            watch_interval: c.watch_interval,
            access_key: c.access_key,
            access_key_file: c.access_key_file,
            secret_key_file: c.secret_key_file,
            account_id: c.account_id,
            client_type: c.client_type,
        },
        routing: raw.routing,
        services,
        emulator: raw.emulator,
        audit: raw.audit,
        telemetry: raw.telemetry,
        forward_proxy: fp,
        sources,
    })
}

/// Parses and orders `[services.NAME.operation_versions]`. TOML tables have no order, so the
/// proxy gives one: a pattern inside another is tried first; two that overlap otherwise would
/// make the pin depend on an order nobody wrote, and are refused. A pattern no request can
/// reach (CONNECT, which the proxy refuses, or outside every `allow` rule) is refused too.
/// Errors name the entry (`Some(pattern)`) when there is one.
fn operation_versions(
    raw: &BTreeMap<String, String>,
    allow: Option<&[String]>,
) -> Result<Vec<OperationVersion>, (Option<String>, String)> {
    use crate::policy::allowlist::Rule;
    let mut pins = Vec::with_capacity(raw.len());
    for (pattern, version) in raw {
        let at = |m: String| (Some(pattern.clone()), m);
        let rule = Rule::parse(pattern).map_err(at)?;
        if !is_major_minor(version) {
            return Err(at(format!("{version:?} is not MAJOR.MINOR (e.g. \"1.0\")")));
        }
        if rule.method() == "CONNECT" {
            return Err(at(
                "no request can match it: the proxy refuses CONNECT".into()
            ));
        }
        if let Some(allow) = allow {
            let allowed: Vec<Rule> = allow.iter().filter_map(|r| Rule::parse(r).ok()).collect();
            if !allowed.iter().any(|a| a.intersects(&rule)) {
                return Err(at(format!(
                    "no request can match it: the service's allow list ({allow:?}) refuses every request it names"
                )));
            }
        }
        pins.push(OperationVersion {
            rule,
            version: version.clone(),
        });
    }
    for (i, a) in pins.iter().enumerate() {
        for b in &pins[i + 1..] {
            let (a_in_b, b_in_a) = (b.rule.covers(&a.rule), a.rule.covers(&b.rule));
            if a_in_b && b_in_a {
                return Err((
                    Some(b.rule.text.clone()),
                    format!(
                        "matches exactly the requests of {:?}; keep one",
                        a.rule.text
                    ),
                ));
            }
            if !a_in_b && !b_in_a && a.rule.intersects(&b.rule) {
                return Err((
                    Some(b.rule.text.clone()),
                    format!(
                        "overlaps {:?} and neither is inside the other, so which pin applies would depend on an order TOML does not keep; write them so no request matches both, or one inside the other (the inner one applies first)",
                        a.rule.text
                    ),
                ));
            }
        }
    }
    // Inner patterns first: one covering fewer of the others comes earlier.
    let covered = |p: &OperationVersion| pins.iter().filter(|o| p.rule.covers(&o.rule)).count();
    let mut keyed: Vec<(usize, OperationVersion)> =
        pins.iter().map(|p| (covered(p), p.clone())).collect();
    keyed.sort_by(|(n, a), (m, b)| n.cmp(m).then_with(|| a.rule.text.cmp(&b.rule.text)));
    Ok(keyed.into_iter().map(|(_, p)| p).collect())
}

/// `host[:port]` (port 443 when absent), lower-cased; no scheme, path or user info.
fn parse_intercept(s: &str) -> Result<http::uri::Authority, String> {
    let bad = || {
        format!(
            "{s:?} is not host:port (e.g. \"virtualserver.kr-west1.e.samsungsdscloud.com:443\")"
        )
    };
    if s.is_empty() || s.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    let a: http::uri::Authority = s.to_ascii_lowercase().parse().map_err(|_| bad())?;
    let has_port = s.rsplit_once(':').is_some_and(|(_, t)| !t.contains(']'));
    match (has_port, a.port_u16()) {
        (true, Some(p)) if p != 0 => Ok(a),
        (true, _) => Err(bad()),
        (false, _) => format!("{}:443", a.host()).parse().map_err(|_| bad()),
    }
}

/// " (in FILE)" or " (from the environment)" for a key, when figment knows.
fn origin_of(fig: &Figment, key: &str) -> String {
    match fig.find_metadata(key) {
        Some(md) => match &md.source {
            Some(src) => format!(" (in {src})"),
            None => format!(" (from {})", md.name),
        },
        None => String::new(),
    }
}

fn names(services: &[ServiceConfig]) -> String {
    services
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn is_major_minor(s: &str) -> bool {
    let Some((a, b)) = s.split_once('.') else {
        return false;
    };
    let num = |x: &str| !x.is_empty() && x.len() <= 4 && x.bytes().all(|c| c.is_ascii_digit());
    num(a) && num(b)
}

fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Durations written as "30s", "500ms", "2m".
mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        // The value is not quoted back: errors never echo file content.
        humantime::parse_duration(&s)
            .map_err(|_| serde::de::Error::custom("is not a duration such as \"30s\" or \"500ms\""))
    }

    pub(super) fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

// ---------------------------------------------------------------- display

impl Config {
    /// The effective configuration as TOML-like text, with no secret in it (the secret is
    /// not part of `Config`; only where it comes from is shown).
    pub fn redacted(&self, secret_source: &str) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let s = &self.server;
        let _ = writeln!(
            o,
            "# files: {}",
            self.sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(o, "[server]");
        let _ = writeln!(o, "listen = \"{}\"", s.listen);
        if let Some(m) = s.socket_mode {
            let _ = writeln!(o, "socket_mode = \"{m:04o}\"");
        }
        let _ = writeln!(o, "admin_listen = \"{}\"", s.admin_listen);
        match s.max_connections {
            Some(n) => {
                let _ = writeln!(o, "max_connections = {n}");
            }
            None => {
                let _ = writeln!(
                    o,
                    "# max_connections: from the file-descriptor limit at start"
                );
            }
        }
        let _ = writeln!(
            o,
            "shutdown_grace = \"{}\"",
            humantime::format_duration(s.shutdown_grace)
        );
        let _ = writeln!(
            o,
            "shutdown_delay = \"{}\"",
            humantime::format_duration(s.shutdown_delay)
        );
        let _ = writeln!(o, "max_concurrent_requests = {}", s.max_concurrent_requests);
        let _ = writeln!(o, "max_header_bytes = {}", s.max_header_bytes);
        let _ = writeln!(
            o,
            "header_read_timeout = \"{}\"",
            humantime::format_duration(s.header_read_timeout)
        );
        let _ = writeln!(
            o,
            "idle_timeout = \"{}\"",
            humantime::format_duration(s.idle_timeout)
        );
        let _ = writeln!(
            o,
            "max_inspected_body_bytes = {}",
            s.max_inspected_body_bytes
        );
        let _ = writeln!(o, "check_live_versions = {}", s.check_live_versions);
        let _ = writeln!(o, "enable_quit = {}", s.enable_quit);
        if let Some(h) = &s.require_header {
            let _ = writeln!(o, "require_header = \"{h}\"");
        }
        let c = &self.credentials;
        let _ = writeln!(o, "\n[credentials]");
        if let Some(ak) = &c.access_key {
            let _ = writeln!(o, "access_key = \"{ak}\"");
        }
        if let Some(f) = &c.access_key_file {
            let _ = writeln!(o, "access_key_file = \"{}\"", f.display());
        }
        let _ = writeln!(o, "secret_key = \"<redacted>\"  # from {secret_source}");
        let _ = writeln!(o, "account_id = \"{}\"", c.account_id);
        let _ = writeln!(o, "client_type = \"{}\"", c.client_type);
        let _ = writeln!(
            o,
            "watch_interval = \"{}\"",
            humantime::format_duration(c.watch_interval)
        );
        let _ = writeln!(o, "\n[routing]");
        if let Some(d) = &self.routing.default_service {
            let _ = writeln!(o, "default_service = \"{d}\"");
        }
        if !self.routing.rewrite_endpoint_catalog {
            let _ = writeln!(o, "rewrite_endpoint_catalog = false");
        }
        for svc in &self.services {
            let _ = writeln!(o, "\n[services.{}]", svc.name);
            if self.emulator.in_process {
                let _ = writeln!(o, "upstream = \"(in-process emulator)\"");
            } else {
                let _ = writeln!(o, "upstream = \"{}\"", svc.upstream.base);
            }
            let _ = writeln!(o, "api_version = \"{}\"", svc.api_version);
            if let Some(r) = &svc.region {
                let _ = writeln!(o, "region = \"{r}\"");
            }
            let _ = writeln!(
                o,
                "timeout = \"{}\"",
                humantime::format_duration(svc.timeout)
            );
            let _ = writeln!(
                o,
                "body_idle_timeout = \"{}\"",
                humantime::format_duration(svc.body_idle_timeout)
            );
            let _ = writeln!(o, "max_idle_connections = {}", svc.max_idle_connections);
            if let Some(ca) = &svc.ca_file {
                let _ = writeln!(o, "ca_file = \"{}\"", ca.display());
            }
            if let Some(a) = &svc.allow {
                let _ = writeln!(o, "allow = {a:?}");
            }
            if svc.allow_unsupported_version {
                let _ = writeln!(o, "allow_unsupported_version = true");
            }
            let r = &svc.retry;
            if *r != RetryConfig::default() {
                let _ = writeln!(
                    o,
                    "retry = {{ max_attempts = {}, budget_percent = {}, backoff = \"{}\", operations = {:?} }}",
                    r.max_attempts,
                    r.budget_percent,
                    humantime::format_duration(r.backoff),
                    r.operations
                );
            }
            if !svc.intercept.is_empty() {
                let all: Vec<&str> = svc.intercept.iter().map(|a| a.as_str()).collect();
                let _ = writeln!(o, "intercept = {all:?}");
            }
            if let Some(n) = svc.max_concurrent_requests {
                let _ = writeln!(o, "max_concurrent_requests = {n}");
            }
            // Last: a table header ends the service's own keys.
            if !svc.operation_versions.is_empty() {
                let _ = writeln!(
                    o,
                    "\n[services.{}.operation_versions]  # tried in this order; none matches: api_version",
                    svc.name
                );
                for op in &svc.operation_versions {
                    let _ = writeln!(o, "\"{}\" = \"{}\"", op.rule.text, op.version);
                }
            }
        }
        let fp = &self.forward_proxy;
        if let Some(listen) = fp.listen {
            let _ = writeln!(o, "\n[forward_proxy]\nlisten = \"{listen}\"");
            for (k, v) in [
                ("ca_cert_file", &fp.ca_cert_file),
                ("ca_key_file", &fp.ca_key_file),
                ("ca_cert_out", &fp.ca_cert_out),
            ] {
                if let Some(v) = v {
                    let _ = writeln!(o, "{k} = \"{}\"", v.display());
                }
            }
        }
        if self.emulator.in_process {
            let _ = writeln!(o, "\n[emulator]\nin_process = true");
        }
        if let Some(f) = &self.audit.file {
            let _ = writeln!(o, "\n[audit]\nfile = \"{}\"", f.display());
        }
        if let Some(e) = &self.telemetry.otlp_endpoint {
            let _ = writeln!(
                o,
                "\n[telemetry]\notlp_endpoint = \"{e}\"\nservice_name = \"{}\"",
                self.telemetry.service_name
            );
        }
        o
    }
}

#[cfg(test)]
// figment::Jail's closure error type is figment's large Error; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const BASE: &str = r#"
        [credentials]
        access_key = "ak"
        [routing]
        default_service = "virtualserver"
        [services.virtualserver]
        upstream = "https://virtualserver.kr-west1.e.samsungsdscloud.com"
        api_version = "1.3"
    "#;

    fn profile(jail: &Jail, name: &str) -> Result<Config, ConfigError> {
        load(
            &Source::Profile {
                name: name.into(),
                dir: jail.directory().join("config"),
            },
            &Overrides::default(),
        )
    }

    #[test]
    fn layers_defaults_files_env_flags() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/default.toml", BASE)?;
            jail.create_file(
                "config/staging.toml",
                "[server]\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7001\"\n[credentials]\naccount_id = \"acct\"\n",
            )?;
            // defaults < files
            let c = profile(jail, "staging").unwrap();
            assert_eq!(c.server.listen.tcp().unwrap().port(), 7000);
            assert_eq!(c.server.shutdown_grace, Duration::from_secs(25));
            assert_eq!(c.credentials.account_id, "acct");
            assert_eq!(c.credentials.client_type, "Openapi");
            let vs = c.service("virtualserver").unwrap();
            assert_eq!(vs.region.as_deref(), Some("kr-west1"));
            assert_eq!(vs.env().as_deref(), Some("e"));
            assert_eq!(vs.timeout, Duration::from_secs(30));
            // files < env; unrelated SCP_PROXY_ variables are ignored
            jail.set_env("SCP_PROXY_SERVER__LISTEN", "127.0.0.1:7100");
            jail.set_env("SCP_PROXY_SERVICES__VIRTUALSERVER__TIMEOUT", "5s");
            jail.set_env("SCP_PROXY_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("SCP_PROXY_SERVICE_HOST", "10.0.0.1");
            let c = profile(jail, "staging").unwrap();
            assert_eq!(c.server.listen.tcp().unwrap().port(), 7100);
            assert_eq!(
                c.service("virtualserver").unwrap().timeout,
                Duration::from_secs(5)
            );
            // env < flags
            let c = load(
                &Source::Profile {
                    name: "staging".into(),
                    dir: jail.directory().join("config"),
                },
                &Overrides {
                    listen: Some("127.0.0.1:7200".parse().unwrap()),
                    admin_listen: None,
                },
            )
            .unwrap();
            assert_eq!(c.server.listen.tcp().unwrap().port(), 7200);
            assert_eq!(c.server.admin_listen.port(), 7001);
            Ok(())
        });
    }

    #[test]
    fn default_listen_is_loopback() {
        let s = ServerConfig::default();
        assert!(s.listen.tcp().unwrap().ip().is_loopback());
        assert!(s.admin_listen.ip().is_loopback());
    }

    #[test]
    fn unknown_file_key_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/default.toml", BASE)?;
            jail.create_file("config/bad.toml", "[server]\nlisen = \"127.0.0.1:1\"\n")?;
            let err = profile(jail, "bad").unwrap_err().to_string();
            assert!(err.contains("lisen"), "{err}");
            assert!(err.contains("bad.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn otlp_endpoint_gets_the_traces_path_unless_it_has_one() {
        let url = |e: &str| {
            TelemetryConfig {
                otlp_endpoint: Some(e.into()),
                ..Default::default()
            }
            .traces_url()
            .map(|u| u.to_string())
        };
        assert_eq!(
            url("http://127.0.0.1:4318").as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            url("https://otel.example/").as_deref(),
            Some("https://otel.example/v1/traces")
        );
        assert_eq!(
            url("http://c:4318/custom/traces").as_deref(),
            Some("http://c:4318/custom/traces")
        );
        assert_eq!(TelemetryConfig::default().traces_url(), None);
    }

    #[test]
    fn invalid_values_name_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/default.toml", BASE)?;
            for (body, key) in [
                (
                    "[services.virtualserver]\napi_version = \"v1.3\"\n",
                    "services.virtualserver.api_version",
                ),
                (
                    "[services.virtualserver]\nupstream = \"https://h/v1\"\n",
                    "services.virtualserver.upstream",
                ),
                (
                    "[services.virtualserver]\nupstream = \"ftp://h\"\n",
                    "services.virtualserver.upstream",
                ),
                (
                    "[routing]\ndefault_service = \"nope\"\n",
                    "routing.default_service",
                ),
                ("[services.virtualserver]\ntimeout = \"soon\"\n", "timeout"),
                ("[server]\nidle_timeout = \"0s\"\n", "server.idle_timeout"),
                (
                    "[server]\nheader_read_timeout = \"30000y\"\n",
                    "server.header_read_timeout",
                ),
                (
                    "[server]\nmax_concurrent_requests = 9999999999\n",
                    "server.max_concurrent_requests",
                ),
                (
                    "[credentials]\naccount_id = \" acct\"\n",
                    "credentials.account_id",
                ),
                (
                    "[server]\nrequire_header = \"X Scp\"\n",
                    "server.require_header",
                ),
                (
                    "[services.virtualserver]\nmax_concurrent_requests = 0\n",
                    "services.virtualserver.max_concurrent_requests",
                ),
                (
                    "[services.virtualserver]\nupstream = \"https://h:99999\"\n",
                    "services.virtualserver.upstream",
                ),
                (
                    "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n",
                    "telemetry.otlp_endpoint",
                ),
                (
                    "[telemetry]\nservice_name = \"\"\n",
                    "telemetry.service_name",
                ),
            ] {
                jail.create_file("config/p.toml", body)?;
                let err = profile(jail, "p").unwrap_err().to_string();
                assert!(err.contains(key), "{body}: {err}");
                assert!(
                    err.contains("p.toml") || err.contains("default.toml"),
                    "{body}: {err}"
                );
            }
            jail.create_file(
                "config/q.toml",
                "[services.vpc]\nupstream = \"https://vpc.kr-west1.e.samsungsdscloud.com\"\n",
            )?;
            let err = profile(jail, "q").unwrap_err().to_string();
            assert!(err.contains("services.vpc.api_version"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_profile_file_is_named() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            let err = profile(jail, "nosuch").unwrap_err().to_string();
            assert!(err.contains("nosuch.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn upstream_kept_exactly_as_written() {
        let u =
            Upstream::parse("https://Virtualserver.kr-west1.e.samsungsdscloud.com:443").unwrap();
        assert_eq!(
            u.base,
            "https://Virtualserver.kr-west1.e.samsungsdscloud.com:443"
        );
        let u = Upstream::parse("http://127.0.0.1:8081/").unwrap();
        assert_eq!(u.base, "http://127.0.0.1:8081");
        assert!(u.is_loopback());
        assert!(Upstream::parse("https://user@h").is_err());
        assert!(Upstream::parse("https://h?x").is_err());
        assert!(Upstream::parse("h:443").is_err());
        for bad in [
            "https://h:99999",
            "https://h:abc",
            "https://h:",
            "https://h:0",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
        assert!(Upstream::parse("https://[::1]:8443").is_ok());
        assert!(Upstream::parse("https://[::1]").is_ok());
        let iam = Upstream::parse("https://iam.s.samsungsdscloud.com").unwrap();
        assert_eq!(iam.scp_region_env(), (None, Some("s".into())));
    }

    #[test]
    fn operation_versions_are_ordered_inner_first_and_validated() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let ok = operation_versions(
            &map(&[
                ("GET /v1/servers/**", "1.2"),
                ("GET /v1/servers/*/security-groups", "1.0"),
                ("DELETE /v1/servers/*/security-groups/*", "1.0"),
            ]),
            None,
        )
        .unwrap();
        let order: Vec<&str> = ok.iter().map(|o| o.rule.text.as_str()).collect();
        assert_eq!(
            order,
            [
                "DELETE /v1/servers/*/security-groups/*",
                "GET /v1/servers/*/security-groups",
                "GET /v1/servers/**"
            ]
        );
        let err = |pairs: &[(&str, &str)], allow: Option<&[String]>| {
            operation_versions(&map(pairs), allow).unwrap_err()
        };
        let (at, m) = err(&[("GET /v1/x", "v1")], None);
        assert_eq!(at.as_deref(), Some("GET /v1/x"));
        assert!(m.contains("MAJOR.MINOR"), "{m}");
        let (at, m) = err(&[("get /v1/x", "1.0")], None);
        assert_eq!(at.as_deref(), Some("get /v1/x"));
        assert!(m.contains("\"GET\""), "{m}");
        let (_, m) = err(&[("CONNECT /x", "1.0")], None);
        assert!(m.contains("no request can match"), "{m}");
        let allow = ["GET /v1/images/**".to_owned()];
        let (at, m) = err(&[("POST /v1/servers/*", "1.0")], Some(&allow));
        assert_eq!(at.as_deref(), Some("POST /v1/servers/*"));
        assert!(
            m.contains("no request can match") && m.contains("allow"),
            "{m}"
        );
        assert!(operation_versions(&map(&[("GET /v1/images/*", "1.0")]), Some(&allow)).is_ok());
        let (_, m) = err(&[("GET /v1/*/x", "1.0"), ("GET /v1/a/*", "1.1")], None);
        assert!(m.contains("overlaps"), "{m}");
        let (_, m) = err(&[("GET /v1/a", "1.0"), ("GET  /v1/a", "1.1")], None);
        assert!(m.contains("exactly"), "{m}");
    }

    #[test]
    fn intercept_entries_are_host_port() {
        assert_eq!(
            parse_intercept("VS.Example.com").unwrap().as_str(),
            "vs.example.com:443"
        );
        assert_eq!(
            parse_intercept("vs.example.com:8443").unwrap().as_str(),
            "vs.example.com:8443"
        );
        assert_eq!(parse_intercept("[::1]:443").unwrap().as_str(), "[::1]:443");
        for bad in [
            "",
            "https://vs.example.com",
            "vs.example.com/x",
            "h:0",
            "h:x",
            "h:",
            "u@h:443",
        ] {
            assert!(parse_intercept(bad).is_err(), "{bad}");
        }
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/default.toml", BASE)?;
            jail.create_file(
                "config/p.toml",
                "[services.virtualserver]\nintercept = [\"a.example:443\"]\n[services.iam]\nupstream = \"https://iam.e.samsungsdscloud.com\"\napi_version = \"1.4\"\nintercept = [\"a.example\"]\n",
            )?;
            let err = profile(jail, "p").unwrap_err().to_string();
            assert!(err.contains("services.virtualserver.intercept"), "{err}");
            jail.create_file(
                "config/q.toml",
                "[forward_proxy]\nlisten = \"127.0.0.1:8443\"\nca_cert_file = \"ca.pem\"\n",
            )?;
            let err = profile(jail, "q").unwrap_err().to_string();
            assert!(err.contains("forward_proxy.ca_key_file"), "{err}");
            jail.create_file(
                "config/r.toml",
                "[services.virtualserver]\nintercept = [\"vs.example\"]\n[forward_proxy]\nlisten = \"127.0.0.1:8443\"\n",
            )?;
            let c = profile(jail, "r").unwrap();
            assert_eq!(
                c.forward_proxy.listen,
                Some("127.0.0.1:8443".parse().unwrap())
            );
            assert_eq!(
                c.service("virtualserver").unwrap().public_authorities(),
                [
                    "virtualserver.kr-west1.e.samsungsdscloud.com:443",
                    "vs.example:443"
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn parse_errors_name_position_never_content() {
        const SENTINEL: &str = "SENTINEL-s3cr3t-9f2c";
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/default.toml", BASE)?;
            for (body, line, column) in [
                // The secret file itself given as the config, and a secret pasted unquoted.
                (format!("{SENTINEL}\n"), 1, 21),
                (format!("[credentials]\nsecret = {SENTINEL}\n"), 2, 10),
                (format!("[server]\n\"{SENTINEL}\n"), 2, 22),
                (
                    format!("[server]\nlisten = \"x\"\nlisten = \"{SENTINEL}\"\n"),
                    3,
                    1,
                ),
            ] {
                jail.create_file("config/p.toml", &body)?;
                let err = profile(jail, "p").unwrap_err();
                let shown = err.to_string();
                assert!(
                    !shown.contains("SENTINEL") && !shown.contains("s3cr3t"),
                    "{shown}"
                );
                assert!(shown.contains("p.toml"), "{shown}");
                assert!(
                    shown.contains(&format!("line {line}, column {column}")),
                    "{body:?}: {shown}"
                );
                assert!(matches!(err, ConfigError::Syntax { .. }), "{shown}");
            }
            // Valid TOML, wrong type: the key and file, never the value.
            for body in [
                format!("[server]\nmax_header_bytes = \"{SENTINEL}\"\n"),
                format!("[server]\nidle_timeout = \"{SENTINEL}\"\n"),
                format!("[server]\nlisten = \"{SENTINEL}\"\n"),
                format!("[credentials]\naccount_id = [\"{SENTINEL}\"]\n"),
            ] {
                jail.create_file("config/p.toml", &body)?;
                let shown = profile(jail, "p").unwrap_err().to_string();
                assert!(!shown.contains("SENTINEL"), "{shown}");
                assert!(shown.contains("p.toml"), "{shown}");
                let key = body.lines().nth(1).unwrap().split(' ').next().unwrap();
                assert!(shown.contains(key), "{shown}");
            }
            Ok(())
        });
    }

    #[test]
    fn toml_messages_keep_only_punctuation() {
        assert_eq!(
            redact_toml_message("invalid string\nexpected `\"`, `'`"),
            "invalid string; expected `\"`, `'`"
        );
        assert_eq!(
            redact_toml_message("duplicate key `secret`"),
            "duplicate key `…`"
        );
        assert_eq!(redact_toml_message(""), "valid TOML");
    }

    #[test]
    fn major_minor() {
        for ok in ["1.3", "10.0", "0.1"] {
            assert!(is_major_minor(ok), "{ok}");
        }
        for bad in ["v1.3", "1", "1.3.0", "1.", ".3", " 1.3", "1.a"] {
            assert!(!is_major_minor(bad), "{bad}");
        }
    }
}
