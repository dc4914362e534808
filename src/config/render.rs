//! `check-config`'s view of the configuration: effective values, no secret.

use super::model::*;

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
