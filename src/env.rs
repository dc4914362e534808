//! The process environment: every variable the proxy reads is read here, and nowhere else.
//!
//! - `SCP_SECRET_KEY`: the secret key, when no `credentials.secret_key_file` is set
//!   ([`secret_key`]).
//! - `SCP_PROXY_<SECTION>__<KEY>`: configuration overrides, a layer of the figment
//!   ([`config_overrides`]).
//! - `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (and their lower-case forms): the egress proxy
//!   ([`var`], through `forward::Egress::from_env`).
//! - `RUST_LOG`: the log filter ([`log_filter`]).
//!
//! Each is read once, at start (or when a subcommand begins); nothing on the request path
//! reads the environment.

/// The environment variable that may carry the secret instead of a file.
pub const SECRET_KEY: &str = "SCP_SECRET_KEY";

/// Prefix of configuration overrides; `__` separates nested keys.
pub(crate) const CONFIG_PREFIX: &str = "SCP_PROXY_";

/// The log filter variable: `level` and `target=level` directives, comma-separated.
pub(crate) const LOG_FILTER: &str = "RUST_LOG";

/// `SCP_SECRET_KEY`, when set (even empty: the credentials say that is an error).
pub(crate) fn secret_key() -> Option<String> {
    var(SECRET_KEY)
}

/// `RUST_LOG`, when set.
pub(crate) fn log_filter() -> Option<String> {
    var(LOG_FILTER)
}

/// The `SCP_PROXY_` variables as a figment provider, nested keys split at `__`; `known`
/// says which (lower-cased, dotted) keys are meant for the configuration, so that others
/// (Kubernetes' `SCP_PROXY_PORT`-style service links) are ignored.
pub(crate) fn config_overrides(known: fn(&str) -> bool) -> figment::providers::Env {
    figment::providers::Env::prefixed(CONFIG_PREFIX)
        .split("__")
        .filter(move |k| known(&k.as_str().to_ascii_lowercase()))
}

/// One variable, when set to valid UTF-8.
pub(crate) fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
