//! `check-config`: the configuration as loaded (secrets redacted), and the deploy gate on the
//! pinned versions; `--online` compares with the upstreams' live version lists.

use super::{load, secret_env, small_runtime, Error};
use crate::catalog::Date;
use crate::cli::{CheckArgs, Cli};
use crate::config::Config;
use crate::credentials::Credentials;
use crate::forward::Egress;
use crate::monitor;
use crate::policy::lifecycle;

pub(super) fn run(cli: &Cli, args: &CheckArgs) -> Result<(), Error> {
    let cfg = load(cli)?;
    let source = if cfg.emulator.in_process {
        "the in-process emulator's throwaway key".to_owned()
    } else {
        Credentials::load(&cfg.credentials, secret_env().as_deref())?
            .secret_source
            .clone()
    };
    print!("{}", cfg.redacted(&source));
    // The CI gate before a deploy: a pin past its date fails unless the service waives it.
    let today = args
        .today
        .unwrap_or_else(|| Date::of(std::time::SystemTime::now()));
    let pins: Vec<_> = cfg.services.iter().flat_map(|s| s.pins()).collect();
    print!("\n{}", lifecycle::pins_table(&pins, today));
    let mut blocked = false;
    for pin in &pins {
        for f in lifecycle::assess(*pin, today).findings {
            let level = match f.severity {
                _ if f.blocks_deploy => "error",
                lifecycle::Severity::Info => "note",
                _ => "warning",
            };
            eprintln!("{level}: {}: {}", pin.key(), f.message);
            blocked |= f.blocks_deploy;
        }
    }
    if args.online {
        if cfg.emulator.in_process {
            eprintln!("note: --online skipped: every service goes to the in-process emulator");
        } else {
            print_live(&cfg, false)?;
        }
    }
    if blocked {
        Err(Error::Blocked)
    } else {
        Ok(())
    }
}

/// Reads every service's live version list; prints it (`tables`) and where it disagrees with
/// the catalog. Unreachable lists are reported, never fatal.
pub(super) fn print_live(cfg: &Config, tables: bool) -> Result<(), Error> {
    let rt = small_runtime()?;
    let egress = Egress::from_env();
    rt.block_on(async {
        for svc in &cfg.services {
            match monitor::fetch_live(svc, &egress, monitor::LIVE_TIMEOUT).await {
                Ok(live) => {
                    if tables {
                        print!("\n{}", lifecycle::live_table(svc.pin(), &live));
                    }
                    for f in lifecycle::compare_live(svc.pin(), &live) {
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
