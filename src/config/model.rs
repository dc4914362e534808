//! The configuration's types, deserialized straight from the layered sources: every field
//! that has a form of its own (a URL, a version, an allowlist rule, a host:port, a duration)
//! is parsed by its deserializer (its form is in `forms`), so an error names the key and the
//! file it came from (figment attaches both). What depends on other keys is checked in
//! `validate`. The same structs give the environment-key check (serde's own
//! `deny_unknown_fields` and the sections `forms::sections` reads from `Config`'s derive) and
//! check-config's view (their `Serialize`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::forms::is_major_minor;
use super::forms::{authorities, duration, named_services, octal_mode, operation_versions};
use crate::policy::allowlist::{Allowlist, Rule};

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
    /// TCP `listen` only: set SO_REUSEPORT, so several proxy processes (one per CPU, each
    /// then on a single-threaded runtime) can listen on the same port and the kernel spreads
    /// connections between them. Each needs its own `admin_listen`.
    pub reuse_port: bool,
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
            reuse_port: false,
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
    /// allowlist rules (`"POST /v1/images/*/import"`), parsed here.
    pub operations: Vec<Rule>,
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

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_body_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Above the peers' usual 64 (the bench's nginx keeps `keepalive 64`): with fewer idle slots
/// than concurrent requests, every response past the cap closes its upstream connection and the
/// next request opens one (at 64 clients and 32 slots, 1 request in 12 paid a connect).
fn default_max_idle_connections() -> usize {
    128
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
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

/// The validated configuration the proxy runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub credentials: CredentialsConfig,
    pub routing: RoutingConfig,
    /// `[services.NAME]`, by name.
    #[serde(with = "named_services")]
    pub services: Vec<ServiceConfig>,
    pub emulator: EmulatorConfig,
    pub audit: AuditConfig,
    pub telemetry: TelemetryConfig,
    pub forward_proxy: ForwardProxyConfig,
    /// Human-readable list of the files that were read, for messages.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
}

/// `[credentials]`. The secret itself is never part of `Config`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// How often key files are checked for changes ("0s": only on SIGHUP).
    #[serde(with = "duration")]
    pub watch_interval: Duration,
    pub access_key: Option<String>,
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    pub account_id: String,
    pub client_type: String,
}

impl Default for CredentialsConfig {
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

/// One `[services.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The table's name (`services.NAME`), set by the services map.
    #[serde(skip)]
    pub name: String,
    /// Required unless the in-process emulator replaces it (checked in `validate`).
    #[serde(default = "Upstream::unset")]
    pub upstream: Upstream,
    /// Required (checked in `validate`, which can say how to write it).
    #[serde(default = "ApiVersion::unset")]
    pub api_version: ApiVersion,
    /// Default: from the upstream's host name (set in `validate`).
    #[serde(default)]
    pub region: Option<String>,
    /// From the end of the request body to the response headers.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// A request or response body that moves no byte for this long fails.
    #[serde(default = "default_body_idle_timeout", with = "duration")]
    pub body_idle_timeout: Duration,
    /// Idle pooled connections kept to the upstream.
    #[serde(default = "default_max_idle_connections")]
    pub max_idle_connections: usize,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allowlist rules, `"METHOD /pattern"`, parsed here (`None`: everything allowed).
    #[serde(default)]
    pub allow: Option<Allowlist>,
    #[serde(default)]
    pub allow_unsupported_version: bool,
    #[serde(default)]
    pub retry: RetryConfig,
    /// `[services.NAME.operation_versions]` (`"METHOD /path" = "MAJOR.MINOR"`), in the order
    /// they are tried (`validate` orders them): the first whose rule matches a request gives
    /// its pin; none: `api_version`.
    #[serde(default, with = "operation_versions")]
    pub operation_versions: Vec<OperationVersion>,
    /// Extra public authorities (`host:port`, lower-case) the forward proxy intercepts for this
    /// service, besides its upstream's own.
    #[serde(default, with = "authorities")]
    pub intercept: Vec<http::uri::Authority>,
    /// At most this many requests to this service at once (None: only the global limit).
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
}

/// One `[services.NAME.operation_versions]` entry: requests matching `rule` are pinned to
/// `version` instead of the service's `api_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationVersion {
    pub rule: Rule,
    pub version: ApiVersion,
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

/// An API version pin, `MAJOR.MINOR` (e.g. "1.3"), as `Scp-Api-Version` carries it after the
/// service name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ApiVersion(String);

impl TryFrom<String> for ApiVersion {
    type Error = &'static str;
    /// The value is not quoted back: errors never echo file content.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_major_minor(&s) {
            Ok(Self(s))
        } else {
            Err("is not MAJOR.MINOR (e.g. \"1.3\")")
        }
    }
}

impl std::str::FromStr for ApiVersion {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

/// Test literals, checked like a file's.
#[cfg(test)]
impl From<&str> for ApiVersion {
    fn from(s: &str) -> Self {
        s.parse().expect("test api_version is MAJOR.MINOR")
    }
}

impl Serialize for ApiVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl std::ops::Deref for ApiVersion {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ApiVersion {
    /// A service without `api_version` until `validate` refuses it.
    pub(super) fn unset() -> Self {
        Self(String::new())
    }

    pub fn is_unset(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `scheme://authority`, kept exactly as written: the signature covers these bytes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// `scheme://authority`
    pub base: String,
}

impl Upstream {
    /// The port connections go to: the explicit one, else the scheme's default.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            })
    }
}

impl TryFrom<String> for Upstream {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl Serialize for Upstream {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.base)
    }
}

impl Upstream {
    /// Where a service without `upstream` points until the in-process emulator's address is
    /// known (`validate` refuses it without the emulator).
    pub(super) fn unset() -> Self {
        Self {
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("127.0.0.1:1"),
            base: "http://127.0.0.1:1".into(),
        }
    }

    /// The error says what is wrong without quoting `s` (it may be a secret pasted into the
    /// wrong key, or hold user info); the caller names the key.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| "is not a URL; write it as https://HOST[:PORT]".to_owned())?;
        let scheme = match scheme {
            "https" => http::uri::Scheme::HTTPS,
            "http" => http::uri::Scheme::HTTP,
            _ => {
                return Err(
                    "the scheme is not supported; use https (or http for a local emulator)".into(),
                )
            }
        };
        let authority_str = rest.strip_suffix('/').unwrap_or(rest);
        if authority_str.is_empty() || authority_str.contains(['/', '?', '#', '@']) {
            return Err(
                "must be scheme://host[:port] only, with no path, query or user info".into(),
            );
        }
        let authority: http::uri::Authority = authority_str
            .parse()
            .map_err(|e| format!("the host[:port] is not valid: {e}"))?;
        // `Authority` accepts any text after the last ':'; a bad port would be signed and sent
        // in Host while the connection silently used the default one.
        let has_port = authority_str
            .rsplit_once(':')
            .is_some_and(|(_, tail)| !tail.contains(']'));
        if has_port && authority.port_u16().is_none_or(|p| p == 0) {
            return Err("has an invalid port; use 1..65535".into());
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
        let port = up.port();
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
            version: op.map_or(&self.api_version, |o| &o.version).as_str(),
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

#[cfg(test)]
mod tests {
    use super::super::forms::{parse_intercept, sections};
    use super::*;

    #[test]
    fn default_listen_is_loopback() {
        let s = ServerConfig::default();
        assert!(s.listen.tcp().unwrap().ip().is_loopback());
        assert!(s.admin_listen.ip().is_loopback());
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
    fn the_sections_are_read_from_the_model() {
        // What `Config` deserializes (its derive's fields) is what it serializes.
        let shown = toml::Value::try_from(Config::default()).unwrap();
        let mut written: Vec<&str> = shown
            .as_table()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut read = sections().to_vec();
        written.sort_unstable();
        read.sort_unstable();
        assert_eq!(read, written);
        assert!(read.contains(&"forward_proxy") && read.contains(&"services"));
    }

    #[test]
    fn major_minor() {
        for ok in ["1.3", "10.0", "0.1"] {
            assert!(is_major_minor(ok), "{ok}");
            assert_eq!(
                ok.parse::<ApiVersion>().map(|v| v.to_string()),
                Ok(ok.into())
            );
        }
        for bad in ["v1.3", "1", "1.3.0", "1.", ".3", " 1.3", "1.a", ""] {
            assert!(!is_major_minor(bad), "{bad}");
            assert!(bad.parse::<ApiVersion>().is_err(), "{bad}");
        }
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
    }
}
