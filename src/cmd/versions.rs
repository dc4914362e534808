//! `versions`: the built-in version catalog, with the configuration's pins marked.

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
    let pins: Vec<(&str, &str)> = cfg
        .iter()
        .flat_map(|c| &c.services)
        .map(|s| (s.name.as_str(), s.api_version.as_str()))
        .collect();
    print!("{}", lifecycle::catalog_table(today, &pins));
    if let (Some(cfg), true) = (&cfg, args.online) {
        if cfg.emulator.in_process {
            eprintln!("note: --online skipped: every service goes to the in-process emulator");
        } else {
            print_live(cfg, true)?;
        }
    }
    Ok(())
}
