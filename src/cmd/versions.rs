//! `versions`: the built-in version catalog, with the configuration's pins marked, and which
//! pin applies to which operations.

use super::check::print_live;
use super::{load, Error};
use crate::catalog::Date;
use crate::cli::{Cli, VersionsArgs};
use crate::policy::lifecycle;

pub(super) fn run(cli: &Cli, args: &VersionsArgs) -> Result<(), Error> {
    let today = args
        .today
        .unwrap_or_else(|| Date::of(std::time::SystemTime::now()));
    let cfg = match cli.config.source() {
        Some(_) => Some(load(cli)?),
        None if args.online => return Err(Error::OnlineNeedsConfig),
        None => None,
    };
    let pins: Vec<lifecycle::Pin<'_>> = cfg
        .iter()
        .flat_map(|c| &c.services)
        .flat_map(|s| s.pins())
        .collect();
    // Marked in the catalog: pins it has dates for (an operation pin outside every dated
    // operation set would mark another operation's version).
    let marked: Vec<(&str, &str)> = pins
        .iter()
        .filter(|p| !p.sets().is_empty())
        .map(|p| (p.service, p.version))
        .collect();
    print!("{}", lifecycle::catalog_table(today, &marked));
    if cfg.is_some() {
        print!("\n{}", lifecycle::pins_table(&pins, today));
    }
    if let (Some(cfg), true) = (&cfg, args.online) {
        if cfg.emulator.in_process {
            eprintln!("note: --online skipped: every service goes to the in-process emulator");
        } else {
            print_live(cfg, true)?;
        }
    }
    Ok(())
}
