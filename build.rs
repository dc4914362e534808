//! Release builds of the binary place the functions it runs first in `.text`, in the order of
//! `scripts/symbol-order.txt`, so the code that is resident is the code that runs and not what
//! the kernel maps around it (see scripts/symbol-order.py for why and how the list is made).
//!
//! Only where the linker is lld, which knows `--symbol-ordering-file`: rustc's own on
//! x86_64-unknown-linux-gnu since Rust 1.90, unless the build picks another linker. Anywhere
//! else, or with `SCP_AUTH_PROXY_SYMBOL_ORDER=0`, the build links as before. A stale list (a new
//! toolchain or dependency renames the functions) costs nothing but the memory it saved:
//! unknown names are skipped without a warning.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scripts/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=SCP_AUTH_PROXY_SYMBOL_ORDER");
    if let Some(list) = ordering_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={list}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

fn ordering_file() -> Option<String> {
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
    // Another linker chosen for the target, or rustc told not to use its own lld.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    // (Cargo sets RUSTC_LINKER for build scripts when a linker is configured.)
    if !var("RUSTC_LINKER").is_empty()
        || [
            "linker=",
            "linker-flavor",
            "link-self-contained",
            "linker-features",
            "fuse-ld",
        ]
        .iter()
        .any(|f| flags.contains(f))
    {
        return None;
    }
    if !rustc_links_with_lld(&var("RUSTC")) {
        return None;
    }
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("scripts/symbol-order.txt");
    list.is_file().then(|| list.display().to_string())
}

/// rustc 1.90 and later link x86_64-unknown-linux-gnu with their own lld by default.
fn rustc_links_with_lld(rustc: &str) -> bool {
    let Ok(out) = Command::new(if rustc.is_empty() { "rustc" } else { rustc })
        .arg("-V")
        .output()
    else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)", or "rustc 1.96.0-nightly (...)"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
