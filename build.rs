//! Release builds of the binary place the functions it runs first in `.text`, in the order of
//! `scripts/symbol-order.txt`, so the code that is resident is the code that runs and not what
//! the kernel maps around it (see scripts/symbol-order.py for why and how the list is made).
//!
//! Only on x86_64 Linux (gnu) and where the linker takes lld's `--symbol-ordering-file`, which a
//! one-line program linked with the build's own flags tells: rustc's own lld does (the default
//! there since Rust 1.90); GNU ld, or a distribution's rustc that uses it, does not, and then the
//! build links as before. `SCP_AUTH_PROXY_SYMBOL_ORDER=0` turns it off. A stale list (a new
//! toolchain or dependency renames the functions) costs nothing but the memory it saved: names
//! the binary lacks are skipped without a warning.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scripts/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=SCP_AUTH_PROXY_SYMBOL_ORDER");
    if let Some(list) = ordering_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

fn ordering_file() -> Option<PathBuf> {
    let var = |k: &str| env::var(k).unwrap_or_default();
    if var("SCP_AUTH_PROXY_SYMBOL_ORDER") == "0" || var("PROFILE") != "release" {
        return None;
    }
    let target = (
        var("CARGO_CFG_TARGET_ARCH"),
        var("CARGO_CFG_TARGET_OS"),
        var("CARGO_CFG_TARGET_ENV"),
    );
    if target != ("x86_64".into(), "linux".into(), "gnu".into()) {
        return None;
    }
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("scripts/symbol-order.txt");
    (list.is_file() && linker_takes_ordering(&list)).then_some(list)
}

/// Links `fn main() {}` for the target with the build's flags and linker, and the ordering file.
fn linker_takes_ordering(list: &Path) -> bool {
    let var = |k: &str| env::var(k).unwrap_or_default();
    let out = PathBuf::from(var("OUT_DIR"));
    let source = out.join("symbol_order_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = var("RUSTC");
    let mut probe = Command::new(if rustc.is_empty() { "rustc" } else { &rustc });
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    probe.args(flags.split('\u{1f}').filter(|f| !f.is_empty()));
    let linker = var("RUSTC_LINKER"); // set by Cargo when a linker is configured
    if !linker.is_empty() {
        probe.arg(format!("-Clinker={linker}"));
    }
    probe
        .args(["--target", &var("TARGET"), "--crate-type", "bin", "-o"])
        .arg(out.join("symbol_order_probe"))
        .arg(format!(
            "-Clink-arg=-Wl,--symbol-ordering-file={}",
            list.display()
        ))
        .arg("-Clink-arg=-Wl,--no-warn-symbol-ordering")
        .arg(&source)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    probe.status().is_ok_and(|s| s.success())
}
