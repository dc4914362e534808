//! The binary's exit codes and messages for what a user gets wrong at start.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_scp-auth-proxy");

fn run(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SCP_SECRET_KEY")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn config(dir: &tempfile::TempDir, body: &str) -> String {
    let p = dir.path().join("proxy.toml");
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[routing]
default_service = "virtualserver"
[services.virtualserver]
upstream = "https://virtualserver.kr-west1.e.samsungsdscloud.com"
api_version = "1.3"
"#;

#[test]
fn missing_secret_file_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let cfg = config(
        &dir,
        &format!(
            "{BASE}[credentials]\naccess_key = \"ak\"\nsecret_key_file = \"{}\"\n",
            missing.display()
        ),
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

#[test]
fn missing_access_key_and_empty_secret_exit_1_naming_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, BASE);
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
        &format!("{BASE}[credentials]\naccess_key = \"ak\"\nsecrt_key_file = \"x\"\n"),
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
        &format!("{BASE}[credentials]\naccess_key = \"ak-cli\"\naccount_id = \"acct-cli\"\n"),
    );
    let url = "https://virtualserver.kr-west1.e.samsungsdscloud.com/v1/images?name=a%20b&name=c";
    let out = Command::new(BIN)
        .args(["sign", "--config", &cfg, "get", url])
        .env("SCP_SECRET_KEY", "cli-secret")
        .output()
        .unwrap();
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
    let expected = scp_auth_proxy::signer::sign(
        b"cli-secret",
        "GET",
        url,
        &ts,
        "ak-cli",
        "acct-cli",
        "Openapi",
    );
    assert_eq!(header("Scp-Signature"), expected);
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
    let cfg = config(&dir, &format!("{BASE}[credentials]\naccess_key = \"ak\"\n"));
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
