//! The real binary, run to completion: one way to spawn it for every test file.

use std::process::{Command, Output};

/// The path cargo built the binary at.
pub const BIN: &str = env!("CARGO_BIN_EXE_scp-auth-proxy");

/// `scp-auth-proxy ARGS` with the variables a developer's shell may carry removed
/// (`SCP_SECRET_KEY`, `RUST_LOG`), so a test sees only what it sets.
pub fn bin(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SCP_SECRET_KEY")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `scp-auth-proxy ARGS` with `envs`; its exit code and everything it printed (stdout,
/// then stderr).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = output(args, envs);
    (out.status.code(), text(&out))
}

/// Like [`run`], keeping stdout and stderr apart.
pub fn output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = bin(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// stdout then stderr, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
