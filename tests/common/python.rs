//! A Python interpreter with pinned PyPI packages, for tests that drive real third-party
//! clients (tests/sdk.rs; reusable by any test that needs a client from PyPI).
//!
//! `.ci/run` builds the virtualenv once and names its interpreter in an environment variable
//! ([`SDK_PYTHON_ENV`] for the SCP SDK); the interpreter given there must have exactly the
//! pinned versions. Without the variable (plain `cargo test`) the virtualenv is built here
//! under `target/tmp/`, keyed by the requirements file's hash, and reused by later runs.
//! When PyPI cannot be reached the test fails, saying so: it never skips.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Names the interpreter of a virtualenv holding `tests/sdk/requirements.txt`.
pub const SDK_PYTHON_ENV: &str = "SCP_SDK_PYTHON";

/// The pinned requirements of the SCP SDK tests.
pub fn sdk_requirements() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/requirements.txt")
}

/// An interpreter with the pinned SCP SDK (`scpv2-sdk`) installed.
pub fn sdk_python() -> PathBuf {
    python_with(&sdk_requirements(), SDK_PYTHON_ENV)
}

/// An interpreter with every `name==version` of `requirements`: the one `env_var` names
/// (checked against the pins), else a virtualenv built under `target/tmp/`.
pub fn python_with(requirements: &Path, env_var: &str) -> PathBuf {
    let pins = pins(requirements);
    if let Some(python) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let python = PathBuf::from(python);
        check_pins(&python, &pins, &format!("{env_var}={}", python.display()));
        return python;
    }
    let text = std::fs::read(requirements).unwrap();
    let hash = hex(&Sha256::digest(&text)[..8]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("venv-{hash}"));
    let python = dir.join("bin/python");
    if dir.join(".ready").exists() {
        return python;
    }
    // Built beside it and renamed into place, so tests building it at once never share a
    // half-made one (a virtualenv finds its packages relative to its interpreter).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.with_extension(format!("tmp-{}-{nanos}", std::process::id()));
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&tmp),
        "python3 -m venv (install python3-venv)",
        Duration::from_secs(120),
    );
    run(
        Command::new(tmp.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-input", "-r"])
            .arg(requirements),
        &format!(
            "pip install -r {} (this test needs PyPI; it does not skip)",
            requirements.display()
        ),
        Duration::from_secs(600),
    );
    check_pins(&tmp.join("bin/python"), &pins, "the new virtualenv");
    std::fs::write(tmp.join(".ready"), "").unwrap();
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test won the race; its virtualenv is complete.
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            dir.join(".ready").exists(),
            "{} is not usable",
            dir.display()
        );
    }
    python
}

/// `name==version` lines, names normalised as pip does (lower case, `_`/`.` as `-`).
fn pins(requirements: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("{}: {e}", requirements.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            assert!(
                l.contains("=="),
                "{}: {l:?} is not pinned with ==",
                requirements.display()
            );
            normalise(l)
        })
        .collect()
}

fn normalise(pin: &str) -> String {
    let (name, version) = pin.split_once("==").unwrap_or((pin, ""));
    format!(
        "{}=={}",
        name.trim().to_ascii_lowercase().replace(['_', '.'], "-"),
        version.trim()
    )
}

/// Fails unless `python` has every pin installed at exactly that version.
fn check_pins(python: &Path, pins: &[String], what: &str) {
    let out = run(
        Command::new(python).args([
            "-m",
            "pip",
            "list",
            "--format=freeze",
            "--disable-pip-version-check",
        ]),
        &format!("{what}: pip list"),
        Duration::from_secs(60),
    );
    let installed: Vec<String> = out.lines().map(normalise).collect();
    let missing: Vec<&String> = pins.iter().filter(|p| !installed.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{what} lacks {missing:?}; installed:\n{out}"
    );
}

/// Runs `cmd` to completion within `limit` (killed by PID after it), panicking with its output
/// unless it succeeds; returns its stdout.
pub fn run(cmd: &mut Command, what: &str, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("{what} failed ({s}):\n{out}{err}"),
        None => panic!("{what} did not finish within {limit:?}:\n{out}{err}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
