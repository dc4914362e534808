//! CLI dispatch and exit codes: 0 clean, 1 bad config or credentials, 2 bad usage (clap).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use scp_auth_proxy::catalog::Date;
use scp_auth_proxy::cli::{
    CheckArgs, Cli, Command, EmulatorArgs, SignArgs, VersionsArgs, WaitArgs,
};
use scp_auth_proxy::config::{self, Config};
use scp_auth_proxy::credentials::{Credentials, SECRET_ENV};
use scp_auth_proxy::emulator;
use scp_auth_proxy::policy::lifecycle;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = scp_auth_proxy::logging::init(cli.log_format);
    let code = match &cli.command {
        Some(Command::CheckConfig(args)) => check_config(&cli, args),
        Some(Command::Versions(args)) => versions(&cli, args),
        Some(Command::Emulator(args)) => run_emulator(&cli, args),
        Some(Command::Sign(args)) => sign(&cli, args),
        Some(Command::Wait(args)) => wait(&cli, args),
        Some(Command::Serve) | None => serve(&cli),
    };
    log.flush();
    code
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    scp_auth_proxy::logging::flush();
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    let Some(source) = cli.config.source() else {
        // Bad usage, like clap's own errors: exit 2.
        eprintln!(
            "error: say which configuration to use: --profile NAME (e.g. --profile dev) or --config FILE\n\nFor more information, try '--help'."
        );
        return Err(ExitCode::from(2));
    };
    config::load(&source, &cli.config.overrides()).map_err(fail)
}

fn secret_env() -> Option<String> {
    std::env::var(SECRET_ENV).ok()
}

/// `sign`: the headers the proxy would set for one request, as `Name: value` lines (usable
/// with `curl -H @file`).
fn sign(cli: &Cli, args: &SignArgs) -> ExitCode {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.emulator.in_process {
        return fail("the dev profile signs with a throwaway key that exists only inside a running proxy; use a profile with a real key pair");
    }
    let method = args.method.to_ascii_uppercase();
    match args.url.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.authority().is_some() => {}
        _ => {
            return fail(format!(
                "{:?} is not a full URL; give it as https://HOST/PATH?QUERY",
                args.url
            ))
        }
    }
    let creds = match Credentials::load(&cfg.credentials, secret_env().as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let timestamp = scp_auth_proxy::signer::timestamp_ms(std::time::SystemTime::now()).to_string();
    let input = scp_auth_proxy::signer::SignInput {
        method: &method,
        url_parts: &[&args.url],
        timestamp: &timestamp,
        access_key: &creds.access_key,
        account_id: &creds.account_id,
        client_type: &creds.client_type,
    };
    scp_auth_proxy::logging::flush();
    eprintln!("string to sign: {}", input.string_to_sign());
    println!("Scp-Accesskey: {}", creds.access_key);
    println!("Scp-Timestamp: {timestamp}");
    println!("Scp-Signature: {}", creds.key.sign(&input).as_str());
    println!("Scp-ClientType: {}", creds.client_type);
    if !creds.account_id.is_empty() {
        println!("Scp-AccountId: {}", creds.account_id);
    }
    ExitCode::SUCCESS
}

/// `wait`: exit 0 once the proxy's admin listener says ready, 1 on timeout.
fn wait(cli: &Cli, args: &WaitArgs) -> ExitCode {
    let admin = match (args.admin, cli.config.source()) {
        (Some(a), _) => a,
        (None, Some(_)) => match load(cli) {
            Ok(c) => c.server.admin_listen,
            Err(code) => return code,
        },
        (None, None) => cli
            .config
            .admin_listen
            .unwrap_or_else(|| config::ServerConfig::default().admin_listen),
    };
    let admin = scp_auth_proxy::wait::reachable(admin);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(scp_auth_proxy::wait::until_ready(admin, args.timeout)) {
        Ok(took) => {
            scp_auth_proxy::logging::flush();
            eprintln!(
                "ready: http://{admin}/readyz answered 200 after {}",
                humantime::format_duration(Duration::from_millis(took.as_millis() as u64))
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn check_config(cli: &Cli, args: &CheckArgs) -> ExitCode {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let source = if cfg.emulator.in_process {
        "the in-process emulator's throwaway key".to_owned()
    } else {
        match Credentials::load(&cfg.credentials, secret_env().as_deref()) {
            Ok(c) => c.secret_source.clone(),
            Err(e) => return fail(e),
        }
    };
    print!("{}", cfg.redacted(&source));
    // The CI gate before a deploy: a pin past its date fails unless the service waives it.
    let today = args
        .today
        .unwrap_or_else(|| Date::of(std::time::SystemTime::now()));
    let mut blocked = false;
    for svc in &cfg.services {
        for f in lifecycle::assess(svc, today).findings {
            let level = if f.blocks_deploy { "error" } else { "warning" };
            eprintln!("{level}: services.{}.api_version: {}", svc.name, f.message);
            blocked |= f.blocks_deploy;
        }
    }
    if args.online {
        if cfg.emulator.in_process {
            eprintln!("note: --online skipped: every service goes to the in-process emulator");
        } else if let Err(code) = print_live(&cfg, false) {
            return code;
        }
    }
    if blocked {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads every service's live version list; prints it (`tables`) and where it disagrees with
/// the catalog. Unreachable lists are reported, never fatal.
fn print_live(cfg: &Config, tables: bool) -> Result<(), ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the runtime: {e}")))?;
    let egress = scp_auth_proxy::forward::Egress::from_env();
    rt.block_on(async {
        for svc in &cfg.services {
            match lifecycle::fetch_live(svc, &egress, lifecycle::LIVE_TIMEOUT).await {
                Ok(live) => {
                    if tables {
                        print!("\n{}", lifecycle::live_table(svc, &live));
                    }
                    for f in lifecycle::compare_live(svc, &live) {
                        eprintln!("warning: services.{}: {}", svc.name, f.message);
                    }
                }
                Err(e) => eprintln!(
                    "warning: services.{}: live version list not read: {e}",
                    svc.name
                ),
            }
        }
    });
    Ok(())
}

fn versions(cli: &Cli, args: &VersionsArgs) -> ExitCode {
    let today = args
        .today
        .unwrap_or_else(|| Date::of(std::time::SystemTime::now()));
    let cfg = match cli.config.source() {
        Some(_) => match load(cli) {
            Ok(c) => Some(c),
            Err(code) => return code,
        },
        None if args.online => return fail(
            "--online reads the services of a configuration: add --config FILE or --profile NAME",
        ),
        None => None,
    };
    let pins: Vec<(&str, &str)> = cfg
        .iter()
        .flat_map(|c| &c.services)
        .map(|s| (s.name.as_str(), s.api_version.as_str()))
        .collect();
    print!("{}", lifecycle::catalog_table(today, &pins));
    if let (Some(cfg), true) = (&cfg, args.online) {
        if cfg.emulator.in_process {
            eprintln!("note: --online skipped: every service goes to the in-process emulator");
        } else if let Err(code) = print_live(cfg, true) {
            return code;
        }
    }
    ExitCode::SUCCESS
}

fn serve(cli: &Cli) -> ExitCode {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.emulator.in_process {
        return serve_dev(cfg);
    }
    let creds = match Credentials::load(&cfg.credentials, secret_env().as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let (Some(_), Some(file)) = (secret_env(), &cfg.credentials.secret_key_file) {
        tracing::warn!(
            file = %file.display(),
            "SCP_SECRET_KEY is set, so credentials.secret_key_file is ignored (and not watched for rotation); unset one of them"
        );
    }
    let watch_interval = cfg.credentials.watch_interval;
    let running_config = scp_auth_proxy::reload::restart_only(&cfg);
    rt.block_on(async move {
        // Before anything is logged as started, so no signal can find the default action.
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(code) => return code,
        };
        let running = match scp_auth_proxy::start(cfg, creds).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        if let Some(source) = cli.config.source() {
            let reloader = scp_auth_proxy::reload::Reloader {
                source,
                overrides: cli.config.overrides(),
                secret_env: secret_env().map(zeroize::Zeroizing::new),
                store: running.credentials.clone(),
                metrics: running.metrics.clone(),
                running: running_config,
                serial: Default::default(),
            };
            scp_auth_proxy::reload::spawn(reloader, watch_interval, signals.hup);
        }
        // A signal, or POST /quitquitquit (which has already begun the drain).
        tokio::select! {
            _ = signals.stop.recv() => tracing::info!("shutting down: draining in-flight requests"),
            _ = running.shutdown_requested() => {}
        }
        running.shutdown();
        tokio::select! {
            // Requests still running when the grace ran out were logged; the stop itself is normal.
            _drained = running.wait() => ExitCode::SUCCESS,
            _ = signals.stop.recv() => {
                tracing::warn!("second signal: exiting at once");
                ExitCode::from(130)
            }
        }
    })
}

/// One worker thread per CPU the process may use; with a single CPU (a sidecar with a one-core
/// limit, or pinned), a current-thread runtime, which skips the work-stealing machinery.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the runtime: {e}")))
}

/// `--profile dev`: the proxy in front of an in-process emulator, throwaway credentials in
/// memory, no key reload (there is no key file).
fn serve_dev(cfg: Config) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(code) => return code,
        };
        let (running, emulator) = match emulator::start_dev(cfg).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
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
        let code = tokio::select! {
            _drained = running.wait() => ExitCode::SUCCESS,
            _ = signals.stop.recv() => return ExitCode::from(130),
        };
        emulator.shutdown();
        emulator.wait().await;
        code
    })
}

/// `scp-auth-proxy emulator`: the emulator alone; SIGHUP re-reads its key file.
fn run_emulator(cli: &Cli, args: &EmulatorArgs) -> ExitCode {
    let standalone = match emulator::standalone_options(args, secret_env().as_deref()) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let listen = cli.config.listen.unwrap_or(emulator::DEFAULT_LISTEN);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let Signals { mut stop, mut hup } = match Signals::install() {
            Ok(s) => s,
            Err(code) => return code,
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {listen} (--listen): {e}")),
        };
        let env_lines = match listener.local_addr() {
            Ok(addr) => standalone.env_lines(&format!("http://{addr}")),
            Err(e) => return fail(format!("cannot listen on {listen} (--listen): {e}")),
        };
        let handle = match emulator::spawn(listener, standalone.opts).await {
            Ok(h) => h,
            Err(e) => return fail(e),
        };
        // Once, on stdout (the log goes to stderr): the only place a generated secret appears.
        scp_auth_proxy::logging::flush();
        {
            use std::io::Write as _;
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
        ExitCode::SUCCESS
    })
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
    fn install() -> Result<Self, ExitCode> {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| fail(format!("cannot handle {name}: {e}")))
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
