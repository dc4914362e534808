//! Key rotation: re-read the key pair (and the configuration it comes from) on SIGHUP or when
//! a key file changes, and swap it in for the next request.
//!
//! Guarantees: the access key and secret are swapped together; any error (bad config, missing
//! or empty file) keeps the running pair and is logged with the reason; in-flight requests
//! keep the pair they started with. Kubernetes updates a mounted Secret by swapping a `..data`
//! symlink, so a change is detected by the resolved path as well as size and mtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{self, ConfigError, CredentialsConfig, Overrides, Source};
use crate::credentials::{CredentialStore, Credentials, CredentialsError};
use crate::metrics::{Metrics, ResultLabel};
use zeroize::Zeroizing;

/// Everything a reload needs, captured at start.
#[derive(Clone)]
pub(crate) struct Reloader {
    pub source: Source,
    pub overrides: Overrides,
    /// The value of `SCP_SECRET_KEY` at start (the environment cannot change later).
    pub secret_env: Option<Zeroizing<String>>,
    pub store: CredentialStore,
    pub metrics: Metrics,
    /// Everything but `[credentials]` as running, to say when a reload changed what only a
    /// restart applies.
    pub running: RestartOnly,
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

/// Why a reload kept the running key pair.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// The parts of a configuration a reload cannot apply (listeners, routes, services, the
/// emulator, where audit records and spans go), compared field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RestartOnly {
    server: config::ServerConfig,
    routing: config::RoutingConfig,
    services: Vec<config::ServiceConfig>,
    emulator: config::EmulatorConfig,
    audit: config::AuditConfig,
    telemetry: config::TelemetryConfig,
}

pub(crate) fn restart_only(cfg: &config::Config) -> RestartOnly {
    RestartOnly {
        server: cfg.server.clone(),
        routing: cfg.routing.clone(),
        services: cfg.services.clone(),
        emulator: cfg.emulator.clone(),
        audit: cfg.audit.clone(),
        telemetry: cfg.telemetry.clone(),
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
    fn read(&self, why: &str) -> Result<Credentials, ReloadError> {
        let cfg = config::load(&self.source, &self.overrides)?;
        if restart_only(&cfg) != self.running {
            tracing::warn!(
                reason = why,
                "the configuration changed outside [credentials]; only the key pair and \
                 [credentials] apply on reload, the rest on restart"
            );
        }
        let secret_env = self.secret_env.as_deref().map(String::as_str);
        Ok(Credentials::load(&cfg.credentials, secret_env)?)
    }

    /// Re-reads configuration and the key pair; swaps them in only when both are valid.
    pub(crate) fn reload(&self, why: &str) -> Result<(), ReloadError> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.read(why);
        match result {
            Ok(creds) => {
                let loaded_at = creds.loaded_at;
                let access_key = creds.access_key.clone();
                self.store.replace(creds);
                self.metrics.set_key_loaded(loaded_at);
                self.metrics
                    .credential_reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                tracing::info!(reason = why, access_key = %access_key, "key pair reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .credential_reloads
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                tracing::error!(reason = why, error = %e, "reload failed; still using the previous key pair");
                Err(e)
            }
        }
    }

    /// The files whose change triggers a reload.
    fn watched(&self) -> Vec<PathBuf> {
        match config::load(&self.source, &self.overrides) {
            Ok(mut cfg) => {
                // SCP_SECRET_KEY wins over the file, so the file's changes mean nothing.
                if self.secret_env.is_some() {
                    cfg.credentials.secret_key_file = None;
                }
                key_files(&cfg.credentials)
            }
            Err(_) => Vec::new(),
        }
    }

    /// Polls the key files every `every` and reloads when one changes. Runs until dropped.
    pub(crate) async fn watch_files(self, every: Duration) {
        let mut files = self.watched();
        let mut stamps: Vec<_> = files.iter().map(|f| FileStamp::of(f)).collect();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now: Vec<_> = files.iter().map(|f| FileStamp::of(f)).collect();
            if now != stamps {
                // Stamps taken before the read: a write that lands during the reload is seen
                // as a change on the next tick. A half-written file fails validation and is
                // retried then too.
                let _ = self.reload("key file changed");
                let new_files = self.watched();
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

/// Reloads on every signal `hup` receives (SIGHUP, installed by the caller before start) and,
/// unless `watch_interval` is zero, when a key file changes, until the process exits.
pub(crate) fn spawn(
    reloader: Reloader,
    watch_interval: Duration,
    mut hup: tokio::signal::unix::Signal,
) {
    if !watch_interval.is_zero() {
        tokio::spawn(reloader.clone().watch_files(watch_interval));
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
    fn only_changes_outside_credentials_count_as_restart_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let load = |credentials: &str, service: &str| {
            let toml = format!(
                "[credentials]\naccess_key = \"ak\"\n{credentials}\n\
                 [services.virtualserver]\nupstream = \"https://virtualserver.kr-west1.e.samsungsdscloud.com\"\n\
                 api_version = \"1.3\"\n{service}\n"
            );
            std::fs::write(&path, toml).unwrap();
            let cfg = config::load(&Source::File(path.clone()), &Overrides::default()).unwrap();
            restart_only(&cfg)
        };
        let running = load("", "");
        assert_eq!(load("", ""), running);
        assert_eq!(load("account_id = \"other\"", ""), running);
        assert_ne!(load("", "timeout = \"9s\""), running);
        assert_ne!(load("", "allow = [\"GET /v1/images\"]"), running);
    }
}
