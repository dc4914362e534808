//! Typed configuration, merged from layers and validated once at load.
//!
//! Layers, lowest first: built-in defaults (serde defaults below) < files < environment
//! (`SCP_PROXY_` prefix, `__` between nested keys) < command-line flags. Unknown keys are
//! errors, in files and in the environment alike; environment variables whose first key names
//! no section are not configuration and are ignored, because Kubernetes injects
//! `SCP_PROXY_PORT`-style service links into every pod. Every error names the key and where
//! its value came from (the file, or the environment).
//!
//! The parts: [`model`] (the types, as deserialized), [`forms`] (how each field is written),
//! [`load`] (sources and layering),
//! [`validate`] (what serde cannot check alone), [`render`] (check-config's view).

use std::path::PathBuf;

mod forms;
mod load;
mod model;
mod render;
mod validate;

use load::describe_load;
pub use load::{figment, load, Overrides, Source};
pub use model::*;

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

#[cfg(test)]
// figment::Jail's closure error type is figment's large Error; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use std::time::Duration;

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
    fn env_overrides_are_checked_like_file_keys() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/default.toml", BASE)?;
            jail.create_file("config/p.toml", "")?;
            // A misspelt override under a section is an error naming it and the environment.
            jail.set_env("SCP_PROXY_SERVER__LISTN", "127.0.0.1:7100");
            let err = profile(jail, "p").unwrap_err().to_string();
            assert!(
                err.contains("server") && err.contains("listn") && err.contains("environment"),
                "{err}"
            );
            std::env::remove_var("SCP_PROXY_SERVER__LISTN");
            // Any key of the model can be overridden, with no list to keep: one per section.
            for (var, value) in [
                ("SCP_PROXY_SERVER__REQUIRE_HEADER", "X-Scp-Proxy"),
                ("SCP_PROXY_CREDENTIALS__CLIENT_TYPE", "Cli"),
                ("SCP_PROXY_ROUTING__REWRITE_ENDPOINT_CATALOG", "false"),
                (
                    "SCP_PROXY_SERVICES__VIRTUALSERVER__MAX_CONCURRENT_REQUESTS",
                    "7",
                ),
                (
                    "SCP_PROXY_SERVICES__VIRTUALSERVER__RETRY__MAX_ATTEMPTS",
                    "3",
                ),
                ("SCP_PROXY_EMULATOR__IMPORT_DELAY", "1s"),
                ("SCP_PROXY_AUDIT__FILE", "audit.jsonl"),
                ("SCP_PROXY_TELEMETRY__SERVICE_NAME", "sidecar"),
                ("SCP_PROXY_FORWARD_PROXY__LISTEN", "127.0.0.1:8443"),
            ] {
                jail.set_env(var, value);
            }
            let c = profile(jail, "p").unwrap();
            let vs = c.service("virtualserver").unwrap();
            assert_eq!(c.server.require_header.as_deref(), Some("X-Scp-Proxy"));
            assert_eq!(c.credentials.client_type, "Cli");
            assert!(!c.routing.rewrite_endpoint_catalog);
            assert_eq!(
                (vs.max_concurrent_requests, vs.retry.max_attempts),
                (Some(7), 3)
            );
            assert_eq!(c.emulator.import_delay, Duration::from_secs(1));
            assert_eq!(
                c.audit.file.as_deref(),
                Some(std::path::Path::new("audit.jsonl"))
            );
            assert_eq!(c.telemetry.service_name, "sidecar");
            assert_eq!(
                c.forward_proxy.listen,
                Some("127.0.0.1:8443".parse().unwrap())
            );
            // A bad value from the environment: the key, and where it came from.
            jail.set_env("SCP_PROXY_SERVICES__VIRTUALSERVER__API_VERSION", "v2");
            let err = profile(jail, "p").unwrap_err().to_string();
            assert!(
                err.contains("services.virtualserver.api_version") && err.contains("environment"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn check_config_shows_every_key_and_reads_back_as_the_same_config() {
        Jail::expect_with(|jail| {
            jail.create_file("ca.pem", "")?;
            jail.create_file(
                "proxy.toml",
                r#"
                [server]
                listen = "unix:/run/p.sock"
                socket_mode = "0660"
                max_connections = 77
                require_header = "X-Scp-Proxy"
                shutdown_delay = "3s"
                [credentials]
                access_key = "ak"
                account_id = "acct"
                watch_interval = "0s"
                [routing]
                default_service = "virtualserver"
                rewrite_endpoint_catalog = false
                [services.virtualserver]
                upstream = "https://virtualserver.kr-west1.e.samsungsdscloud.com"
                api_version = "1.3"
                ca_file = "ca.pem"
                allow = ["GET /v1/images/**", "POST /v1/servers/**"]
                allow_unsupported_version = true
                intercept = ["vs.example"]
                max_concurrent_requests = 9
                max_idle_connections = 4
                timeout = "5s"
                body_idle_timeout = "7s"
                retry = { max_attempts = 3, backoff = "1s", operations = ["POST /v1/servers/*"] }
                [services.virtualserver.operation_versions]
                "POST /v1/servers/*/security-groups" = "1.0"
                "POST /v1/servers/**" = "1.2"
                [services.iam]
                upstream = "http://127.0.0.1:9000"
                api_version = "1.0"
                [audit]
                file = "audit.jsonl"
                [telemetry]
                otlp_endpoint = "http://127.0.0.1:4318"
                [forward_proxy]
                listen = "127.0.0.1:8443"
                ca_cert_out = "ca-out.pem"
                "#,
            )?;
            let load = |file: &str| load(&Source::File(file.into()), &Overrides::default());
            let first = load("proxy.toml").unwrap();
            let shown = first.redacted("a test");
            assert!(
                shown.contains("secret_key = \"<redacted> (from a test)\""),
                "{shown}"
            );
            // What is shown is the configuration: read back (without the secret's line), it
            // is the same, every key included.
            let back: String = shown
                .lines()
                .filter(|l| !l.starts_with("secret_key"))
                .map(|l| format!("{l}\n"))
                .collect();
            jail.create_file("shown.toml", &back)?;
            let second = load("shown.toml").unwrap();
            assert_eq!(
                Config {
                    sources: Vec::new(),
                    ..first
                },
                Config {
                    sources: Vec::new(),
                    ..second
                },
                "{shown}"
            );
            Ok(())
        });
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
                    "[services.virtualserver]\nallow = [\"GET /v1/**\", \"GET v1\"]\n",
                    "services.virtualserver.allow",
                ),
                (
                    "[services.virtualserver.retry]\noperations = [\"POST v1\"]\n",
                    "services.virtualserver.retry.operations.0",
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
    fn a_bad_value_is_named_by_its_key_never_quoted() {
        const SENTINEL: &str = "SENTINEL-s3cr3t-77aa";
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file("config/default.toml", BASE)?;
            for (body, key) in [
                (
                    format!("[services.virtualserver]\nupstream = \"https://u:{SENTINEL}@h\"\n"),
                    "services.virtualserver.upstream",
                ),
                (
                    format!("[services.virtualserver]\nupstream = \"{SENTINEL}\"\n"),
                    "services.virtualserver.upstream",
                ),
                (
                    format!("[services.virtualserver]\napi_version = \"{SENTINEL}\"\n"),
                    "services.virtualserver.api_version",
                ),
                (
                    format!("[services.virtualserver]\nintercept = [\"a.example\", \"{SENTINEL}/\"]\n"),
                    "services.virtualserver.intercept",
                ),
                (
                    format!("[services.virtualserver.operation_versions]\n\"GET /v1/x\" = \"{SENTINEL}\"\n"),
                    "services.virtualserver.operation_versions.\"GET /v1/x\"",
                ),
            ] {
                jail.create_file("config/p.toml", &body)?;
                let err = profile(jail, "p").unwrap_err().to_string();
                assert!(err.contains(key) && err.contains("p.toml"), "{body}: {err}");
                assert!(!err.contains("s3cr3t"), "{body}: {err}");
            }
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
    fn intercept_entries_name_their_key_and_file() {
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
}
