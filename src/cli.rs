//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Overrides, Source};

/// Signs Samsung Cloud Platform (SCP) OpenAPI requests so apps never hold the key.
///
/// Apps send plain HTTP to the proxy on loopback (e.g. `curl http://127.0.0.1:8080/v1/images`);
/// it adds Scp-Accesskey, Scp-Timestamp, Scp-Signature and the other SCP headers, pins
/// Scp-Api-Version per service, checks image-import URLs, and forwards over TLS.
///
/// Try it with no cloud account:  scp-auth-proxy --profile dev
#[derive(Debug, Parser)]
#[command(name = "scp-auth-proxy", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SCP_PROXY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Reload when a configuration file changes (checked every credentials.watch_interval,
    /// 2s when that is 0s), as SIGHUP does: services, routing, pins, allowlists, limits and
    /// the key pair; listener addresses apply on restart only.
    #[arg(long)]
    pub watch_config: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

const EXAMPLES: &str = "\
Examples:
  scp-auth-proxy --profile dev                       # local SCP emulator, no account needed
  scp-auth-proxy --profile prod --config-dir /etc/scp-auth-proxy
  scp-auth-proxy --config proxy.toml                 # one file alone
  scp-auth-proxy check-config --profile prod         # validate, print with the secret redacted

Configuration layers, lowest first: built-in defaults < files < environment
(SCP_PROXY_SERVER__LISTEN=127.0.0.1:8080, `__` between nested keys) < flags.
The secret comes from SCP_SECRET_KEY or credentials.secret_key_file.
Log level: RUST_LOG, level and target=level directives (e.g. RUST_LOG=debug;
RUST_LOG=info,access=off silences request lines).";

#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// Read this configuration file alone.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "profile")]
    pub config: Option<PathBuf>,

    /// Read DIR/default.toml, then DIR/NAME.toml (e.g. dev, staging, prod).
    #[arg(long, value_name = "NAME", global = true)]
    pub profile: Option<String>,

    /// Where --profile looks for its files.
    #[arg(long, value_name = "DIR", default_value = "config", global = true)]
    pub config_dir: PathBuf,

    /// Data-plane listen address (overrides server.listen). With `emulator`: where the
    /// emulator listens (default 127.0.0.1:18080).
    #[arg(long, value_name = "ADDR", global = true)]
    pub listen: Option<SocketAddr>,

    /// Admin listen address for /healthz, /readyz, /metrics (overrides server.admin_listen).
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin_listen: Option<SocketAddr>,
}

impl ConfigArgs {
    /// Where to read configuration from; `None` when neither --config nor --profile was given.
    pub fn source(&self) -> Option<Source> {
        match (&self.config, &self.profile) {
            (Some(f), _) => Some(Source::File(f.clone())),
            (None, Some(p)) => Some(Source::Profile {
                name: p.clone(),
                dir: self.config_dir.clone(),
            }),
            (None, None) => None,
        }
    }

    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default when no command is given).
    Serve,
    /// Validate the configuration and credentials, print the effective config (secret
    /// redacted) and check each pinned API version against the version catalog; exit 0 when
    /// clean, 1 otherwise (a pin past its last supported day fails unless the service sets
    /// allow_unsupported_version = true).
    CheckConfig(CheckArgs),
    /// Print the built-in catalog of SCP API versions and their lifecycle; with --online and a
    /// configuration, also each configured service's live version list.
    Versions(VersionsArgs),
    /// Run the built-in SCP emulator alone (an upstream that checks signatures like SCP).
    Emulator(EmulatorArgs),
    /// Print the SCP headers for one request, signed now with the configured key pair (for
    /// debugging a 401: compare with what the cloud computed). The string to sign goes to
    /// stderr; it holds no secret.
    ///
    /// Example: scp-auth-proxy sign --profile prod GET 'https://virtualserver.kr-west1.e.samsungsdscloud.com/v1/images?limit=10'
    Sign(SignArgs),
    /// Wait until a proxy's admin listener answers /readyz with 200, then exit 0; exit 1 with
    /// what the last attempt saw when --timeout passes. For an init step or the entrypoint of
    /// an app that must not start before its sidecar.
    ///
    /// Example: scp-auth-proxy wait --admin 127.0.0.1:9901 --timeout 30s && exec my-app
    Wait(WaitArgs),
}

/// Options of `wait`.
#[derive(Debug, Args, Clone)]
pub struct WaitArgs {
    /// The proxy's admin address. Default: server.admin_listen of the configuration given with
    /// --config or --profile, else --admin-listen, else 127.0.0.1:9901.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

/// Options of `sign`.
#[derive(Debug, Args, Clone)]
pub struct SignArgs {
    /// HTTP method, e.g. GET or POST.
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// The full URL exactly as it goes on the wire (scheme, host, escaped path, query):
    /// percent-encoded, so no raw space or non-ASCII character.
    #[arg(value_name = "URL", value_parser = parse_wire_url)]
    pub url: String,
}

/// Options of `check-config`.
#[derive(Debug, Args, Clone, Default)]
pub struct CheckArgs {
    /// Also read each service's live version list (unsigned GET on the service root) and warn
    /// where it disagrees with the built-in catalog.
    #[arg(long)]
    pub online: bool,
    /// Judge version dates as of this UTC day (YYYY-MM-DD) instead of today; for tests.
    #[arg(long, value_name = "YYYY-MM-DD", hide = true, value_parser = parse_day)]
    pub today: Option<crate::catalog::Date>,
}

/// Options of `versions`.
#[derive(Debug, Args, Clone, Default)]
pub struct VersionsArgs {
    /// Also read the live version list of each service in the configuration given with
    /// --config or --profile.
    #[arg(long)]
    pub online: bool,
    /// Count days left from this UTC day (YYYY-MM-DD) instead of today; for tests.
    #[arg(long, value_name = "YYYY-MM-DD", hide = true, value_parser = parse_day)]
    pub today: Option<crate::catalog::Date>,
}

fn parse_day(s: &str) -> Result<crate::catalog::Date, String> {
    crate::catalog::Date::parse(s).ok_or_else(|| format!("{s:?} is not a day such as 2026-05-31"))
}

/// Accepts a URL only in the form it goes on the wire. A raw space or non-ASCII character
/// would be signed as typed while any HTTP client sends it percent-encoded, so the signature
/// could never match; the message shows the encoded form to use instead.
fn parse_wire_url(s: &str) -> Result<String, String> {
    if s.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(s.to_owned());
    }
    let mut encoded = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_graphic() {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Err(format!(
        "not a wire URL: it holds raw spaces, control or non-ASCII characters, which clients \
         send percent-encoded (and SCP signs as sent); sign the encoded form: {encoded}"
    ))
}

// `scp-auth-proxy emulator [--listen ADDR] [--access-key K] [--secret-key-file F] [--account-id A]`:
// needs no --config or --profile; the address comes from the global `--listen`.
#[derive(Debug, Args, Clone)]
#[command(after_help = EMULATOR_EXAMPLES)]
pub struct EmulatorArgs {
    /// The access key it accepts [default: emulator-access-key with a given secret, else a
    /// generated one].
    #[arg(long, value_name = "KEY")]
    pub access_key: Option<String>,
    /// File holding the secret key it accepts; SIGHUP re-reads it. Without it (and without
    /// SCP_SECRET_KEY; the file wins when both are set) the emulator generates throwaway
    /// credentials and prints them once on stdout as KEY=value lines.
    #[arg(long, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// The account id it expects in Scp-AccountId [default: "" (none sent) with a given
    /// secret, else a generated one].
    #[arg(long, value_name = "ID")]
    pub account_id: Option<String>,
    /// How long an accepted image import stays `importing` before it is `active`.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub import_delay: std::time::Duration,
}

const EMULATOR_EXAMPLES: &str = "\
Examples:
  scp-auth-proxy emulator > emulator.env   # throwaway credentials, printed once as KEY=value lines
  printf 'emulator-secret' > /tmp/emu-secret
  scp-auth-proxy emulator --listen 127.0.0.1:18080 --secret-key-file /tmp/emu-secret
  kill -HUP <pid>     # re-read the key file (rotation)";

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration such as \"3s\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_takes_wire_urls_only() {
        let ok = "https://h.example/v1/images?name=%EC%9A%B0%EB%B6%84%ED%88%AC&q=a+b%2Fc:d";
        assert_eq!(parse_wire_url(ok).as_deref(), Ok(ok));
        let err = parse_wire_url("https://h.example/v1/images?name=우분투 22").unwrap_err();
        assert!(
            err.ends_with("https://h.example/v1/images?name=%EC%9A%B0%EB%B6%84%ED%88%AC%2022"),
            "{err}"
        );
        for bad in ["https://h/a b", "https://h/\t", "https://h/é"] {
            assert!(parse_wire_url(bad).is_err(), "{bad:?}");
        }
    }
}
