//! The binary: parse the command line, run the subcommand ([`scp_auth_proxy::cmd`]), and map
//! its error to the exit code, once. 0 clean, 1 bad config or credentials (or a failed deploy
//! gate), 2 bad usage (as clap's own errors), 130 a second stop signal while draining.

use std::process::ExitCode;

use clap::Parser;
use scp_auth_proxy::cli::Cli;
use scp_auth_proxy::{cmd, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = logging::init(cli.log_format);
    let result = cmd::run(&cli);
    log.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_reported() {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
