//! The dev profile (`emulator.in_process = true`): the proxy in front of an in-process SCP
//! emulator with throwaway credentials. Wiring above both, so the emulator itself needs
//! nothing of the proxy.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::credentials::{Credentials, CredentialsError};
use crate::emulator::{
    self, random_hex, EmulatorError, EmulatorHandle, EmulatorOptions, SecretSource,
};
use crate::{Running, StartError};

/// Why `--profile dev` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevStartError {
    #[error("emulator.listen = {0}: the in-process emulator accepts a throwaway key and must listen on loopback (e.g. 127.0.0.1:0)")]
    NotLoopback(SocketAddr),
    #[error("cannot make throwaway credentials from /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
    #[error("cannot listen on {addr} (emulator.listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error("cannot point the services at the emulator: {0}")]
    Redirect(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Starts the emulator in-process on `config.emulator.listen` with throwaway credentials, points
/// every service at it, and starts the proxy with the same credentials, held in memory only.
/// No secret file or variable is read: the credential checks of a real profile do not apply.
pub async fn start_dev(mut config: Config) -> Result<(Running, EmulatorHandle), DevStartError> {
    let listen = config.emulator.listen;
    if !listen.ip().is_loopback() {
        return Err(DevStartError::NotLoopback(listen));
    }
    let access_key = format!("dev-{}", random_hex(8).map_err(DevStartError::Random)?);
    let secret = Zeroizing::new(random_hex(32).map_err(DevStartError::Random)?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| DevStartError::Bind {
            addr: listen,
            source,
        })?;
    let mut opts = EmulatorOptions::new(
        access_key.clone(),
        SecretSource::memory(secret.as_bytes().to_vec()),
    );
    opts.account_id = config.credentials.account_id.clone();
    opts.import_delay = config.emulator.import_delay;
    if let Some(region) = config.services.iter().find_map(|s| s.region.clone()) {
        opts.region = region;
    }
    let emulator = emulator::spawn(listener, opts).await?;
    config
        .redirect_upstreams(&emulator.base_url())
        .map_err(DevStartError::Redirect)?;
    let creds = Credentials::from_parts(
        &access_key,
        secret.as_bytes(),
        &config.credentials.account_id,
        &config.credentials.client_type,
        "the in-process emulator's throwaway key",
    )?;
    let running = crate::start(config, creds).await?;
    tracing::info!(
        emulator = %emulator.base_url(),
        proxy = %format!("http://{}", running.addr),
        "dev profile: every service goes to the in-process SCP emulator, with throwaway credentials"
    );
    Ok((running, emulator))
}
