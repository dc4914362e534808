//! `serve` (the default): the proxy until SIGTERM/SIGINT or `POST /quitquitquit`, with
//! SIGHUP, the key-file watch and `--watch-config` reloading the configuration and key pair. `--profile dev` serves in front of an
//! in-process emulator instead ([`super::dev`]).

use super::{load, runtime, secret_env, Error, Signals};
use crate::cli::Cli;
use crate::config::Config;
use crate::credentials::Credentials;
use crate::reload;

pub(super) fn run(cli: &Cli) -> Result<(), Error> {
    let cfg = load(cli)?;
    if cfg.emulator.in_process {
        return serve_dev(cfg);
    }
    let creds = Credentials::load(&cfg.credentials, secret_env().as_deref())?;
    let rt = runtime()?;
    if let (Some(_), Some(file)) = (secret_env(), &cfg.credentials.secret_key_file) {
        tracing::warn!(
            file = %file.display(),
            "SCP_SECRET_KEY is set, so credentials.secret_key_file is ignored (and not watched for rotation); unset one of them"
        );
    }
    let watch_interval = cfg.credentials.watch_interval;
    rt.block_on(async move {
        // Before anything is logged as started, so no signal can find the default action.
        let mut signals = Signals::install()?;
        let running = crate::start(cfg, creds).await?;
        if let Some(source) = cli.config.source() {
            let reloader = reload::Reloader {
                source,
                overrides: cli.config.overrides(),
                secret_env: secret_env().map(zeroize::Zeroizing::new),
                live: running.live.clone(),
                serial: Default::default(),
            };
            reload::spawn(reloader, watch_interval, cli.watch_config, signals.hup);
        }
        // A signal, or POST /quitquitquit (which has already begun the drain).
        tokio::select! {
            _ = signals.stop.recv() => tracing::info!("shutting down: draining in-flight requests"),
            _ = running.shutdown_requested() => {}
        }
        running.shutdown();
        tokio::select! {
            // Requests still running when the grace ran out were logged; the stop itself is normal.
            _drained = running.wait() => Ok(()),
            _ = signals.stop.recv() => {
                tracing::warn!("second signal: exiting at once");
                Err(Error::Interrupted)
            }
        }
    })
}

/// `--profile dev`: the proxy in front of an in-process emulator, throwaway credentials in
/// memory, no key reload (there is no key file).
fn serve_dev(cfg: Config) -> Result<(), Error> {
    runtime()?.block_on(async move {
        let mut signals = Signals::install()?;
        let (running, emulator) = super::dev::start_dev(cfg).await?;
        // No key file to re-read; SIGHUP must not end the process either.
        let mut hup = signals.hup;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: the dev profile's throwaway key is not reloaded");
            }
        });
        // A signal, or POST /quitquitquit (which has already begun the drain).
        tokio::select! {
            _ = signals.stop.recv() => tracing::info!("shutting down: draining in-flight requests"),
            _ = running.shutdown_requested() => {}
        }
        running.shutdown();
        tokio::select! {
            _drained = running.wait() => {}
            _ = signals.stop.recv() => return Err(Error::Interrupted),
        }
        emulator.shutdown();
        emulator.wait().await;
        Ok(())
    })
}
