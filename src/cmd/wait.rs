//! `wait`: exit 0 once the proxy's admin listener says ready, 1 on timeout.

use std::time::Duration;

use super::{load, small_runtime, Error};
use crate::cli::{Cli, WaitArgs};
use crate::config::ServerConfig;

pub(super) fn run(cli: &Cli, args: &WaitArgs) -> Result<(), Error> {
    let admin = match (args.admin, cli.config.source()) {
        (Some(a), _) => a,
        (None, Some(_)) => load(cli)?.server.admin_listen,
        (None, None) => cli
            .config
            .admin_listen
            .unwrap_or_else(|| ServerConfig::default().admin_listen),
    };
    let admin = crate::wait::reachable(admin);
    let took = small_runtime()?.block_on(crate::wait::until_ready(admin, args.timeout))?;
    crate::logging::flush();
    eprintln!(
        "ready: http://{admin}/readyz answered 200 after {}",
        humantime::format_duration(Duration::from_millis(took.as_millis() as u64))
    );
    Ok(())
}
