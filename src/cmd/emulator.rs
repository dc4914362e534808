//! `emulator`: the SCP emulator alone; SIGHUP re-reads its key file.

use std::io::Write as _;

use super::{runtime, secret_env, Error, Signals};
use crate::cli::{Cli, EmulatorArgs};
use crate::credentials::{self, SECRET_ENV};
use crate::emulator::{
    self, random_hex, EmulatorError, EmulatorOptions, SecretSource, Standalone, DEFAULT_ACCESS_KEY,
};

pub(super) fn run(cli: &Cli, args: &EmulatorArgs) -> Result<(), Error> {
    let standalone = standalone_options(args, secret_env().as_deref())?;
    let listen = cli.config.listen.unwrap_or(emulator::DEFAULT_LISTEN);
    runtime()?.block_on(async move {
        let Signals { mut stop, mut hup } = Signals::install()?;
        let listen_err = |source| Error::Listen {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let env_lines = standalone.env_lines(&format!("http://{addr}"));
        let handle = emulator::spawn(listener, standalone.opts).await?;
        // Once, on stdout (the log goes to stderr): the only place a generated secret appears.
        crate::logging::flush();
        {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(env_lines.as_bytes()).and_then(|()| out.flush());
        }
        drop(env_lines);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    if let Err(e) = handle.reload() {
                        tracing::warn!(error = %e, "SIGHUP: secret key not re-read; the previous key stays in use");
                    }
                }
                _ = stop.recv() => break,
            }
        }
        handle.shutdown();
        handle.wait().await;
        Ok(())
    })
}

/// Builds the standalone emulator's options from `scp-auth-proxy emulator` flags.
/// `--secret-key-file` wins over `secret_env` (the value of `SCP_SECRET_KEY`), as flags win
/// over the environment everywhere else. With neither, a throwaway secret is generated, and so
/// are the access key and account id unless given: the emulator starts with no setup at all.
pub(crate) fn standalone_options(
    args: &EmulatorArgs,
    secret_env: Option<&str>,
) -> Result<Standalone, EmulatorError> {
    let random = |bytes| random_hex(bytes).map_err(EmulatorError::Random);
    let (secret, generated) = match (&args.secret_key_file, secret_env) {
        (Some(path), _) => (SecretSource::File(path.clone()), false),
        (None, Some(v)) => {
            let origin = format!("the {SECRET_ENV} environment variable");
            let secret = credentials::clean("secret key", &origin, v.as_bytes())?;
            (SecretSource::memory(secret), false)
        }
        (None, None) => (SecretSource::memory(random(32)?.into_bytes()), true),
    };
    let access_key = match (&args.access_key, generated) {
        (Some(k), _) => k.clone(),
        (None, false) => DEFAULT_ACCESS_KEY.to_owned(),
        (None, true) => format!("emu-{}", random(8)?),
    };
    let account_id = match (&args.account_id, generated) {
        (Some(a), _) => a.clone(),
        (None, false) => String::new(),
        // A letter first, so that no reader of the env line takes it for a number.
        (None, true) => format!("a{}", &random(16)?[1..]),
    };
    let mut opts = EmulatorOptions::new(access_key, secret);
    opts.account_id = account_id;
    opts.import_delay = args.import_delay;
    Ok(Standalone { opts, generated })
}
