//! The command layer: one module per subcommand, each returning `Result<(), Error>`;
//! `main` prints the error once and maps it to the exit code ([`Error::exit_code`]).
//!
//! Exit codes: 0 clean; 1 bad configuration or credentials, a failed start, or a deploy gate
//! that failed; 2 bad usage (like clap's own errors); 130 a second stop signal during the
//! drain.

mod check;
pub mod dev;
mod emulator;
mod serve;
mod sign;
mod versions;
mod wait;

use std::net::SocketAddr;

use crate::cli::{Cli, Command};
use crate::config::{self, Config, ConfigError};
use crate::credentials::CredentialsError;
use crate::emulator::EmulatorError;
use crate::StartError;

/// Why a subcommand did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("say which configuration to use: --profile NAME (e.g. --profile dev) or --config FILE\n\nFor more information, try '--help'.")]
    NoConfig,
    #[error("--online reads the services of a configuration: add --config FILE or --profile NAME")]
    OnlineNeedsConfig,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Dev(#[from] dev::DevStartError),
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error(transparent)]
    Wait(#[from] crate::wait::WaitError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot handle {signal}: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (--listen): {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the dev profile signs with a throwaway key that exists only inside a running proxy; use a profile with a real key pair")]
    DevSign,
    #[error("{0:?} is not a full URL; give it as https://HOST/PATH?QUERY")]
    NotAUrl(String),
    /// check-config: a pin past its date that the service does not waive (already printed).
    #[error("an api_version pin blocks the deploy")]
    Blocked,
    /// A second SIGTERM/SIGINT while draining (already logged).
    #[error("second signal during the drain")]
    Interrupted,
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NoConfig => 2,
            Error::Interrupted => 130,
            _ => 1,
        }
    }

    /// Whether `main` should print the error: false when it was already said.
    pub fn is_reported(&self) -> bool {
        matches!(self, Error::Blocked | Error::Interrupted)
    }
}

/// Runs the subcommand `cli` names (`serve` by default).
pub fn run(cli: &Cli) -> Result<(), Error> {
    match &cli.command {
        Some(Command::CheckConfig(args)) => check::run(cli, args),
        Some(Command::Versions(args)) => versions::run(cli, args),
        Some(Command::Emulator(args)) => emulator::run(cli, args),
        Some(Command::Sign(args)) => sign::run(cli, args),
        Some(Command::Wait(args)) => wait::run(cli, args),
        Some(Command::Serve) | None => serve::run(cli),
    }
}

/// The configuration `--config` / `--profile` name.
fn load(cli: &Cli) -> Result<Config, Error> {
    let source = cli.config.source().ok_or(Error::NoConfig)?;
    Ok(config::load(&source, &cli.config.overrides())?)
}

fn secret_env() -> Option<String> {
    crate::env::secret_key()
}

/// A runtime for a short command (one thread).
fn small_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// One worker thread per CPU the process may use; with a single CPU (a sidecar with a one-core
/// limit, or pinned), a current-thread runtime, which skips the work-stealing machinery.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().map_err(Error::Runtime)
}

/// The process's signal handlers, installed before anything starts.
struct Signals {
    /// SIGTERM or SIGINT.
    stop: Stop,
    hup: tokio::signal::unix::Signal,
}

struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

impl Signals {
    fn install() -> Result<Self, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| Error::Signal {
                signal: name,
                source,
            })
        };
        Ok(Self {
            stop: Stop {
                term: handler(SignalKind::terminate(), "SIGTERM")?,
                int: handler(SignalKind::interrupt(), "SIGINT")?,
            },
            hup: handler(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}
