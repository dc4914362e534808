//! Checks serde cannot make alone: ranges, files, and keys that depend on each other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;

use super::load::require_file;
use super::model::*;
use super::ConfigError;
use crate::policy::allowlist::Allowlist;

/// Upper bound for `retry.max_attempts`.
const MAX_ATTEMPTS: u32 = 5;

/// Upper bound for every duration setting.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Upper bound for `server.max_concurrent_requests` (tokio's semaphore takes far more, but no
/// sidecar needs more than this).
const MAX_CONCURRENT: usize = 1_000_000;

/// Extracts `Config` from `fig` (each field parsed by its deserializer) and checks what
/// depends on more than one field. Errors name the key and where its value came from.
pub(crate) fn from_figment(fig: &Figment, sources: Vec<PathBuf>) -> Result<Config, ConfigError> {
    let mut config: Config = fig.extract()?;
    config.sources = sources;
    check(&mut config, fig)?;
    Ok(config)
}

/// The checks, in the order a reader of the file meets the keys; fills the values that
/// default from others (a service's region from its upstream).
fn check(config: &mut Config, fig: &Figment) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.to_string(),
        origin: origin_of(fig, key),
        message,
    };

    if config.services.is_empty() {
        return Err(invalid(
            "services",
            "no service is configured; add e.g. [services.virtualserver] with upstream and api_version".into(),
        ));
    }
    let in_process = config.emulator.in_process;
    for s in &mut config.services {
        let name = s.name.clone();
        let key = |field: &str| format!("services.{name}.{field}");
        if !is_service_name(&name) {
            return Err(invalid(
                &format!("services.{name}"),
                "service names are lower-case letters, digits, '-' and '_'".into(),
            ));
        }
        // The in-process emulator replaces a missing upstream at start.
        if !in_process && !fig.contains(&key("upstream")) {
            return Err(invalid(
                &key("upstream"),
                format!("missing; set it to the service endpoint, e.g. https://{name}.kr-west1.e.samsungsdscloud.com"),
            ));
        }
        if s.api_version.is_unset() {
            return Err(invalid(
                &key("api_version"),
                "missing; pin the API version as \"MAJOR.MINOR\", e.g. \"1.3\"".into(),
            ));
        }
        if s.region.is_none() {
            s.region = s.upstream.scp_region_env().0;
        }
        if let Some(r) = &s.region {
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
        let pins = std::mem::take(&mut s.operation_versions);
        s.operation_versions =
            order_operation_versions(pins, s.allow.as_ref()).map_err(|(op, m)| {
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
        if let Some(n) = s.max_concurrent_requests {
            if !(1..=MAX_CONCURRENT).contains(&n) {
                return Err(invalid(
                    &key("max_concurrent_requests"),
                    format!("must be between 1 and {MAX_CONCURRENT}"),
                ));
            }
        }
    }
    let services = &config.services;
    if let Some(d) = &config.routing.default_service {
        if !services.iter().any(|s| &s.name == d) {
            return Err(invalid(
                "routing.default_service",
                format!(
                    "{d:?} is not a configured service (configured: {})",
                    names(services)
                ),
            ));
        }
    }
    // One intercepted authority names one service: the forward proxy routes by it.
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for svc in services {
        for a in &svc.intercept {
            if let Some(other) = owners.insert(a.as_str(), &svc.name) {
                return Err(invalid(
                    &format!("services.{}.intercept", svc.name),
                    format!("{a} is also in services.{other}.intercept; one authority can name one service"),
                ));
            }
        }
    }
    let fp = &config.forward_proxy;
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
    let server = &config.server;
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
    let c = &config.credentials;
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
    if let Some(e) = &config.telemetry.otlp_endpoint {
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
    if config.telemetry.service_name.is_empty() || config.telemetry.service_name.len() > 128 {
        return Err(invalid(
            "telemetry.service_name",
            "must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

/// Orders `[services.NAME.operation_versions]` (each entry already parsed). TOML tables have
/// no order, so the proxy gives one: a pattern inside another is tried first; two that
/// overlap otherwise would make the pin depend on an order nobody wrote, and are refused. A
/// pattern outside every `allow` rule can match no request and is refused too. Errors name
/// the entry (`Some(pattern)`) when there is one.
pub(super) fn order_operation_versions(
    pins: Vec<OperationVersion>,
    allow: Option<&Allowlist>,
) -> Result<Vec<OperationVersion>, (Option<String>, String)> {
    if let Some(allow) = allow {
        for pin in &pins {
            if !allow.rules.iter().any(|a| a.intersects(&pin.rule)) {
                return Err((
                    Some(pin.rule.text.clone()),
                    format!(
                        "no request can match it: the service's allow list ({}) refuses every request it names",
                        allow.describe()
                    ),
                ));
            }
        }
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

/// " (in FILE)" or " (from the environment)" for a key, when figment knows.
fn origin_of(fig: &Figment, key: &str) -> String {
    match fig.find_metadata(key) {
        Some(md) => match &md.source {
            Some(src) => format!(" (in {})", super::load::source_text(src)),
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

fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::forms::operation_version;
    use super::*;

    #[test]
    fn operation_versions_are_ordered_inner_first_and_validated() {
        // Each entry parsed on its own (as its deserializer does), then ordered together.
        let operation_versions = |pairs: &BTreeMap<String, String>, allow: Option<&Allowlist>| {
            let mut pins = Vec::new();
            for (p, v) in pairs {
                pins.push(operation_version(p, v).map_err(|m| (Some(p.clone()), m))?);
            }
            order_operation_versions(pins, allow)
        };
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
        let err = |pairs: &[(&str, &str)], allow: Option<&Allowlist>| {
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
        let allow = Allowlist::parse(&["GET /v1/images/**".to_owned()]).unwrap();
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
}
