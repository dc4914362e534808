//! Reload: on SIGHUP, when a key file changes, or (with `--watch-config`) when a
//! configuration file changes, re-read the configuration and the key pair, build the whole
//! data plane from them (services, routing, pins, allowlists, retry, limits), and swap it in
//! for the next request.
//!
//! Guarantees: nothing is swapped until everything is valid: the configuration as `load`
//! validates it, the key pair, every service's client (TLS roots, egress) and the loop check
//! against the running listeners; then the key pair and the stack are swapped together. Any
//! error keeps the running configuration and key pair, is logged with the reason and counted
//! (`config_reloads_total{result="failed"}`). A request keeps the stack it arrived on to the
//! end. What only a restart applies (listener addresses and the other `[server]` keys but the
//! two limits and `require_header`, `[audit]`, `[telemetry]`, `[emulator]`) is named in a
//! warning when it changed and otherwise kept as running. Kubernetes updates a mounted Secret
//! or ConfigMap by swapping a `..data` symlink, so a change is detected by the resolved path as
//! well as size and mtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::app::{Install, ProxyParts};
use crate::config::{self, Config, ConfigError, CredentialsConfig, Overrides, Source};
use crate::credentials::{CredentialStore, Credentials, CredentialsError};
use crate::forward::Egress;
use crate::layers::audit::Sink;
use crate::metrics::{Metrics, ResultLabel};
use crate::telemetry::Exporter;
use zeroize::Zeroizing;

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Build(#[from] crate::StartError),
}

/// The running data plane's reloadable side: what a reload builds from and swaps into.
#[derive(Clone)]
pub(crate) struct Live {
    pub install: Install,
    pub store: CredentialStore,
    pub metrics: Metrics,
    pub egress: Egress,
    /// Kept across reloads (restart-only): the audit file and the span exporter.
    pub audit: Sink,
    pub telemetry: Option<Exporter>,
    /// The proxy's own listeners, for the loop check.
    pub own: Vec<(&'static str, SocketAddr)>,
    /// The configuration serving now.
    pub running: Arc<Mutex<Config>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Validates `cfg` with `creds` fully, then swaps both in for the next request.
    pub(crate) fn apply(
        &self,
        cfg: Config,
        creds: Credentials,
        why: &str,
    ) -> Result<(), ReloadError> {
        let mut parts =
            ProxyParts::new(&cfg, self.store.clone(), self.metrics.clone(), &self.egress)
                .map_err(crate::StartError::from)?;
        crate::check_loops(&cfg.services, &self.own, &self.egress)?;
        parts.audit = self.audit.clone();
        parts.telemetry = self.telemetry.clone();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let kept = restart_only_changes(&running, &cfg);
        if !kept.is_empty() {
            tracing::warn!(
                reason = why,
                keys = %kept.join(", "),
                "changed, but applies on restart only; running with the old value"
            );
        }
        let names = |c: &Config| {
            c.services
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };
        let (before, after) = (names(&running), names(&cfg));
        let added: Vec<_> = after
            .iter()
            .filter(|n| !before.contains(n))
            .cloned()
            .collect();
        let removed: Vec<_> = before
            .iter()
            .filter(|n| !after.contains(n))
            .cloned()
            .collect();
        let loaded_at = creds.loaded_at;
        let access_key = creds.access_key.clone();
        self.store.replace(creds);
        (self.install)(&parts);
        self.metrics.set_key_loaded(loaded_at);
        crate::monitor::report(
            &cfg.services,
            crate::catalog::Date::of(SystemTime::now()),
            &self.metrics,
            false,
        );
        tracing::info!(
            reason = why,
            services = %after.join(", "),
            added = %added.join(", "),
            removed = %removed.join(", "),
            access_key = %access_key,
            "configuration and key pair reloaded"
        );
        *running = cfg;
        Ok(())
    }
}

/// The keys whose change only a restart applies: `key (old -> new)` for the listeners, the
/// section's name for the rest.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push(format!(
            "server.listen ({} -> {})",
            old.server.listen, new.server.listen
        ));
    }
    if old.server.admin_listen != new.server.admin_listen {
        out.push(format!(
            "server.admin_listen ({} -> {})",
            old.server.admin_listen, new.server.admin_listen
        ));
    }
    // The rest of [server] but what the stack holds: the two limits and the required header.
    let rest = |c: &Config| config::ServerConfig {
        listen: old.server.listen.clone(),
        admin_listen: old.server.admin_listen,
        max_concurrent_requests: 0,
        max_inspected_body_bytes: 0,
        require_header: None,
        ..c.server.clone()
    };
    if rest(old) != rest(new) {
        out.push(
            "[server] keys other than max_concurrent_requests, max_inspected_body_bytes and require_header".into(),
        );
    }
    for (key, changed) in [
        (
            "credentials.watch_interval",
            old.credentials.watch_interval != new.credentials.watch_interval,
        ),
        ("[audit]", old.audit != new.audit),
        ("[telemetry]", old.telemetry != new.telemetry),
        ("[emulator]", old.emulator != new.emulator),
        // The forward proxy's CA and its table of intercepted hosts are built at start.
        ("[forward_proxy]", old.forward_proxy != new.forward_proxy),
        (
            "the hosts the forward proxy intercepts (services.NAME.upstream and intercept)",
            old.forward_proxy.listen.is_some() && intercepted(old) != intercepted(new),
        ),
    ] {
        if changed {
            out.push(key.into());
        }
    }
    out
}

/// Each service's public authorities, as the forward proxy's table is built from them.
fn intercepted(c: &Config) -> Vec<(&str, Vec<String>)> {
    c.services
        .iter()
        .map(|s| (s.name.as_str(), s.public_authorities()))
        .collect()
}

/// Everything a reload needs, captured at start.
#[derive(Clone)]
pub(crate) struct Reloader {
    pub source: Source,
    pub overrides: Overrides,
    /// The value of `SCP_SECRET_KEY` at start (the environment cannot change later).
    pub secret_env: Option<Zeroizing<String>>,
    pub live: Live,
    /// SIGHUP and the file watcher may fire together; one reload at a time, so an older read
    /// can never be stored after a newer one.
    pub serial: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .field(
                "secret_env",
                &self.secret_env.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// What identifies a file's current content without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    resolved: Option<PathBuf>,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    pub(crate) fn of(path: &std::path::Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            resolved: std::fs::canonicalize(path).ok(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

impl Reloader {
    /// The configuration and the key pair it names, read anew.
    fn read(&self) -> Result<(Config, Credentials), ReloadError> {
        let cfg = config::load(&self.source, &self.overrides)?;
        let secret_env = self.secret_env.as_deref().map(String::as_str);
        let creds = Credentials::load(&cfg.credentials, secret_env)?;
        Ok((cfg, creds))
    }

    /// Re-reads configuration and the key pair; swaps them in only when all is valid.
    pub(crate) fn reload(&self, why: &str) -> Result<(), ReloadError> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let metrics = &self.live.metrics;
        let result = self
            .read()
            .and_then(|(cfg, creds)| self.live.apply(cfg, creds, why));
        let result_label = if result.is_ok() { "ok" } else { "failed" };
        for family in [&metrics.config_reloads, &metrics.credential_reloads] {
            family
                .get_or_create(&ResultLabel {
                    result: result_label,
                })
                .inc();
        }
        if let Err(e) = &result {
            tracing::error!(reason = why, error = %e, "reload failed; still using the previous configuration and key pair");
        }
        result
    }

    /// The files whose change triggers a reload: the key files, and with `config` the
    /// configuration files too.
    fn watched(&self, config: bool) -> Vec<PathBuf> {
        let mut files = match config::load(&self.source, &self.overrides) {
            Ok(mut cfg) => {
                // SCP_SECRET_KEY wins over the file, so the file's changes mean nothing.
                if self.secret_env.is_some() {
                    cfg.credentials.secret_key_file = None;
                }
                key_files(&cfg.credentials)
            }
            Err(_) => Vec::new(),
        };
        if config {
            // Also when the configuration does not load now: its fix must be noticed.
            files.extend(self.source.files());
        }
        files
    }

    /// Polls the key files every `every` and reloads when one changes. Runs until dropped.
    /// Polls the watched files every `every` and reloads when one changes (with
    /// `config`, the configuration files too). Runs until dropped.
    pub(crate) async fn watch_files(self, every: Duration, config: bool) {
        let mut files = self.watched(config);
        let mut stamps: Vec<_> = files.iter().map(|f| FileStamp::of(f)).collect();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = if config {
            "a configuration or key file changed"
        } else {
            "key file changed"
        };
        loop {
            tick.tick().await;
            let now: Vec<_> = files.iter().map(|f| FileStamp::of(f)).collect();
            if now != stamps {
                // Stamps taken before the read: a write that lands during the reload is seen
                // as a change on the next tick. A half-written file fails validation and is
                // retried then too.
                let _ = self.reload(why);
                let new_files = self.watched(config);
                if new_files == files {
                    stamps = now;
                } else {
                    files = new_files;
                    stamps = files.iter().map(|f| FileStamp::of(f)).collect();
                }
            }
        }
    }
}

/// How often `--watch-config` looks when key files are not watched (`watch_interval = "0s"`).
const CONFIG_WATCH_DEFAULT: Duration = Duration::from_secs(2);

/// Reloads on every signal `hup` receives (SIGHUP, installed by the caller before start) and,
/// unless `watch_interval` is zero, when a key file changes (with `watch_config`, also when a
/// configuration file changes), until the process exits.
pub(crate) fn spawn(
    reloader: Reloader,
    watch_interval: Duration,
    watch_config: bool,
    mut hup: tokio::signal::unix::Signal,
) {
    let every = match (watch_interval.is_zero(), watch_config) {
        (false, _) => Some(watch_interval),
        (true, true) => Some(CONFIG_WATCH_DEFAULT),
        (true, false) => None,
    };
    if let Some(every) = every {
        tokio::spawn(reloader.clone().watch_files(every, watch_config));
    }
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reloader.reload("SIGHUP");
        }
    });
}

fn key_files(c: &CredentialsConfig) -> Vec<PathBuf> {
    c.secret_key_file
        .iter()
        .chain(c.access_key_file.iter())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_follows_symlink_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "one\n").unwrap();
        std::fs::write(&b, "two\n").unwrap();
        let link = dir.path().join("secret");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let before = FileStamp::of(&link);
        let tmp = dir.path().join("secret.tmp");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_ne!(FileStamp::of(&link), before);
        assert!(FileStamp::of(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn only_listeners_and_the_like_count_as_restart_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let load = |server: &str, credentials: &str, service: &str| {
            let toml = format!(
                "[server]\n{server}\n[credentials]\naccess_key = \"ak\"\n{credentials}\n\
                 [services.virtualserver]\nupstream = \"https://virtualserver.kr-west1.e.samsungsdscloud.com\"\n\
                 api_version = \"1.3\"\n{service}\n"
            );
            std::fs::write(&path, toml).unwrap();
            config::load(&Source::File(path.clone()), &Overrides::default()).unwrap()
        };
        let running = load("", "", "");
        let kept = |c: &Config| restart_only_changes(&running, c);
        assert!(kept(&load("", "", "")).is_empty());
        // What a reload applies.
        assert!(kept(&load("", "account_id = \"other\"", "")).is_empty());
        assert!(kept(&load("", "", "timeout = \"9s\"")).is_empty());
        assert!(kept(&load("", "", "allow = [\"GET /v1/images\"]")).is_empty());
        assert!(kept(&load("max_concurrent_requests = 7", "", "")).is_empty());
        assert!(kept(&load("require_header = \"X-Scp-Proxy\"", "", "")).is_empty());
        // What it does not.
        assert_eq!(
            kept(&load("listen = \"127.0.0.1:8081\"", "", "")),
            ["server.listen (127.0.0.1:8080 -> 127.0.0.1:8081)"]
        );
        assert_eq!(kept(&load("idle_timeout = \"5s\"", "", "")).len(), 1);
        assert_eq!(
            kept(&load("", "watch_interval = \"9s\"", "")),
            ["credentials.watch_interval"]
        );
        // The forward proxy: its section, and the hosts it intercepts while it listens.
        let fp = "[forward_proxy]\nlisten = \"127.0.0.1:8443\"";
        assert_eq!(kept(&load("", "", fp)), ["[forward_proxy]"]);
        let running = load("", "", fp);
        let kept = |c: &Config| restart_only_changes(&running, c);
        assert!(kept(&load("", "", fp)).is_empty());
        assert_eq!(
            kept(&load(
                "",
                "",
                &format!("intercept = [\"vs.example:443\"]\n{fp}")
            )),
            ["the hosts the forward proxy intercepts (services.NAME.upstream and intercept)"]
        );
    }
}
