//! The binary's exit codes and messages for what a user gets wrong at start.

mod common;

use common::{run, TestConfig};

const SCP: &str = "https://virtualserver.kr-west1.e.samsungsdscloud.com";

/// The test service at SCP, with no access key: each test adds the credentials it is about.
fn base() -> TestConfig {
    TestConfig::new(SCP).remove("credentials", "access_key")
}

fn config(dir: &tempfile::TempDir, cfg: TestConfig) -> String {
    cfg.write(dir.path().join("proxy.toml"))
}

#[test]
fn missing_secret_file_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let cfg = config(
        &dir,
        base()
            .credentials("access_key = \"ak\"")
            .secret_file(&missing),
    );
    for cmd in [
        vec!["--config", &cfg],
        vec!["check-config", "--config", &cfg],
    ] {
        let (code, out) = run(&cmd, &[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(&missing.display().to_string()), "{out}");
    }
}

/// A `RUST_LOG` that does not parse is said so at start, and the proxy logs at `info` as if
/// it were unset: the start error below still reaches the user.
#[test]
fn unparsable_rust_log_is_warned_about_and_info_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let cfg = config(
        &dir,
        base()
            .credentials("access_key = \"ak\"")
            .secret_file(&missing),
    );
    let (code, out) = run(&["--config", &cfg], &[("RUST_LOG", "info,access=loud")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("RUST_LOG is not a list"), "{out}");
    assert!(out.contains("info,access=loud"), "{out}");
    assert!(out.contains(&missing.display().to_string()), "{out}");
    let (_, out) = run(&["--config", &cfg], &[("RUST_LOG", "info,access=off")]);
    assert!(!out.contains("RUST_LOG"), "{out}");
}

#[test]
fn missing_access_key_and_empty_secret_exit_1_naming_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, base());
    let (code, out) = run(&["--config", &cfg], &[("SCP_SECRET_KEY", "s")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("credentials.access_key"), "{out}");
    let (code, out) = run(
        &["--config", &cfg],
        &[
            ("SCP_SECRET_KEY", "\n"),
            ("SCP_PROXY_CREDENTIALS__ACCESS_KEY", "ak"),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("SCP_SECRET_KEY") && out.contains("empty"),
        "{out}"
    );
}

#[test]
fn bad_config_exits_1_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir,
        base().credentials("access_key = \"ak\"\nsecrt_key_file = \"x\""),
    );
    let (code, out) = run(
        &["check-config", "--config", &cfg],
        &[("SCP_SECRET_KEY", "s")],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("secrt_key_file") && out.contains("proxy.toml"),
        "{out}"
    );
}

#[test]
fn bad_usage_exits_2_and_help_teaches() {
    let (code, out) = run(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = run(&["--config", "a.toml", "--profile", "dev"], &[]);
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = run(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for needle in [
        "--profile dev",
        "check-config",
        "SCP_SECRET_KEY",
        "SCP_PROXY_",
        "RUST_LOG",
    ] {
        assert!(
            out.contains(needle),
            "--help should mention {needle}:\n{out}"
        );
    }
}

#[test]
fn no_source_says_how_to_choose_one() {
    let (code, out) = run(&[], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--profile") && out.contains("--config"),
        "{out}"
    );
}

#[test]
fn sign_prints_headers_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir,
        base().credentials("access_key = \"ak-cli\"\naccount_id = \"acct-cli\""),
    );
    let target = "/v1/images?name=a%20b&name=c";
    let url = format!("{SCP}{target}");
    let out = common::bin::output(
        &["sign", "--config", &cfg, "get", &url],
        &[("SCP_SECRET_KEY", "cli-secret")],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .to_owned()
    };
    let ts = header("Scp-Timestamp");
    // Checked by the tests' own verifier, as the cloud would: over what goes on the wire.
    let mut wire = http::HeaderMap::new();
    wire.insert("host", SCP.trim_start_matches("https://").parse().unwrap());
    for name in [
        "Scp-Timestamp",
        "Scp-Accesskey",
        "Scp-AccountId",
        "Scp-ClientType",
        "Scp-Signature",
    ] {
        let value = header(name);
        wire.insert(
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    assert!(
        common::signature_valid(b"cli-secret", "https", "GET", target, &wire),
        "{stdout}"
    );
    assert_eq!(header("Scp-Accesskey"), "ak-cli");
    assert_eq!(header("Scp-AccountId"), "acct-cli");
    assert_eq!(header("Scp-ClientType"), "Openapi");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "string to sign: GET{url}{ts}ak-cliacct-cliOpenapi"
        )),
        "{stderr}"
    );
    assert!(!format!("{stdout}{stderr}").contains("cli-secret"));
    let (code, out) = run(
        &["sign", "--config", &cfg, "GET", "/v1/images"],
        &[("SCP_SECRET_KEY", "s")],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not a full URL"), "{out}");
}

/// `sign` signs the URL as it goes on the wire; a raw space or non-ASCII character (which any
/// client would send encoded) is refused, and the message shows the encoded form.
#[test]
fn sign_refuses_a_url_that_is_not_on_the_wire_form() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, base().credentials("access_key = \"ak\""));
    let raw = "https://virtualserver.kr-west1.e.samsungsdscloud.com/v1/images?name=우분투 22.04";
    let (code, out) = run(
        &["sign", "--config", &cfg, "GET", raw],
        &[("SCP_SECRET_KEY", "s")],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(!out.contains("Scp-Signature"), "{out}");
    let encoded = "https://virtualserver.kr-west1.e.samsungsdscloud.com/v1/images?name=%EC%9A%B0%EB%B6%84%ED%88%AC%2022.04";
    assert!(out.contains(encoded), "{out}");
    // The form it suggests is accepted.
    let (code, out) = run(
        &["sign", "--config", &cfg, "GET", encoded],
        &[("SCP_SECRET_KEY", "s")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("string to sign: GET{encoded}")),
        "{out}"
    );
}
