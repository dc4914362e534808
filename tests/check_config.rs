//! `check-config` and `versions` through the real binary, with a fixed day (`--today`) so the
//! version lifecycle does not depend on when the tests run.

mod common;

use common::TestConfig;

/// The one test service pinned to `pin` at `upstream`, then `extra` as it is (it may open
/// sub-tables of the service).
fn config(pin: &str, extra: &str, upstream: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    TestConfig::new(upstream)
        .credentials("access_key = \"ak\"")
        .service(&format!("api_version = \"{pin}\""))
        .raw(extra)
        .write(f.path());
    f
}

const SCP: &str = "https://virtualserver.kr-west1.e.samsungsdscloud.com";

fn run(args: &[&str]) -> (i32, String, String) {
    let out = common::bin(args)
        .env("SCP_SECRET_KEY", "dummy")
        .env_remove("SCP_PROXY_SERVER__LISTEN")
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(file: &tempfile::NamedTempFile, today: &str) -> (i32, String, String) {
    let path = file.path().to_str().unwrap();
    run(&["check-config", "--config", path, "--today", today])
}

#[test]
fn pin_past_its_date_fails_naming_the_date_and_the_newest_version() {
    let f = config("1.1", "", SCP);
    let (code, stdout, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(stderr.contains("2026-05-31"), "{stderr}");
    assert!(stderr.contains("1.3"), "{stderr}");
    assert!(stderr.contains("allow_unsupported_version"), "{stderr}");
    // The effective config is still printed, secret redacted.
    assert!(stdout.contains("api_version = \"1.1\""), "{stdout}");
    assert!(!stdout.contains("dummy"), "{stdout}");
}

/// The printed configuration is TOML (up to the version table), rendered from the model: the
/// effective value of every key, defaults included, and the secret only as where it comes from.
#[test]
fn the_effective_configuration_is_printed_as_toml() {
    let f = config("1.3", "timeout = \"5s\"\nintercept = [\"vs.example\"]", SCP);
    let (code, stdout, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 0, "{stderr}");
    let shown = stdout.split("\n# version pins").next().unwrap();
    let doc: toml::Table = shown.parse().unwrap_or_else(|e| panic!("{e}\n{shown}"));
    let vs = &doc["services"]["virtualserver"];
    assert_eq!(vs["timeout"].as_str(), Some("5s"));
    assert_eq!(
        vs["region"].as_str(),
        Some("kr-west1"),
        "derived from the upstream"
    );
    assert_eq!(vs["intercept"][0].as_str(), Some("vs.example:443"));
    assert_eq!(
        vs["retry"]["max_attempts"].as_integer(),
        Some(2),
        "a default shows"
    );
    assert_eq!(doc["server"]["shutdown_grace"].as_str(), Some("25s"));
    let secret = doc["credentials"]["secret_key"].as_str().unwrap();
    assert!(
        secret.starts_with("<redacted>") && secret.contains("SCP_SECRET_KEY"),
        "{secret}"
    );
    assert!(!stdout.contains("dummy"), "{stdout}");
}

#[test]
fn on_its_last_day_the_pin_passes_with_a_warning() {
    let f = config("1.1", "", SCP);
    let (code, _, stderr) = check(&f, "2026-05-31");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("0 days left"),
        "{stderr}"
    );
}

#[test]
fn allow_unsupported_version_passes_with_a_warning() {
    let f = config("1.1", "allow_unsupported_version = true", SCP);
    let (code, stdout, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("2026-05-31"),
        "{stderr}"
    );
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(
        stdout.contains("allow_unsupported_version = true"),
        "{stdout}"
    );
}

#[test]
fn current_pin_is_clean_and_unknown_versions_warn_once() {
    let f = config("1.3", "", SCP);
    let (code, _, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    let f = config("1.9", "", SCP);
    let (code, _, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(stderr.contains("not in the version catalog"), "{stderr}");
}

#[test]
fn within_90_days_warns() {
    let f = config("1.2", "", SCP);
    let (code, _, stderr) = check(&f, "2026-06-02");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("90 days left"), "{stderr}");
    let (_, _, stderr) = check(&f, "2026-06-01");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn bad_allowlist_rule_fails_naming_the_key() {
    let f = config(
        "1.3",
        r#"allow = ["GET /v1/images/**", "POST v1/images"]"#,
        SCP,
    );
    let (code, _, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("services.virtualserver.allow") && stderr.contains("start with '/'"),
        "{stderr}"
    );
}

#[test]
fn versions_prints_the_catalog_with_the_pin_marked() {
    let (code, stdout, stderr) = run(&["versions", "--today", "2026-06-01"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("as of 2026-06-01"), "{stdout}");
    let line = stdout.lines().find(|l| l.contains(" 1.1 ")).unwrap();
    assert!(
        line.contains("DEPRECATED") && line.contains("2026-05-31") && line.contains("-1 (ended)"),
        "{stdout}"
    );

    let f = config("1.2", "", SCP);
    let path = f.path().to_str().unwrap();
    let (code, stdout, stderr) = run(&["versions", "--config", path, "--today", "2026-06-01"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("1.2*") && l.contains("91")),
        "{stdout}"
    );

    let (code, _, stderr) = run(&["versions", "--online"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--config"), "{stderr}");
}

/// `versions` with a configuration: which pin applies to which operations, and only dated
/// pins marked in the catalog (the security-group 1.0 is not image operations' 1.0).
#[test]
fn versions_shows_which_pin_applies_to_which_operation() {
    let f = config(
        "1.3",
        "[services.virtualserver.operation_versions]\n\
         \"POST /v1/servers/*/security-groups\" = \"1.0\"\n\
         \"POST /v1/images/*/import\" = \"1.2\"\n",
        SCP,
    );
    let path = f.path().to_str().unwrap();
    let (code, stdout, stderr) = run(&["versions", "--config", path, "--today", "2026-06-01"]);
    assert_eq!(code, 0, "{stderr}");
    for (ops, version, verdict) in [
        (
            "POST /v1/images/*/import",
            "1.2",
            "image operations: SUPPORTED until 2026-08-31 (91 days left)",
        ),
        (
            "POST /v1/servers/*/security-groups",
            "1.0",
            "unknown (no dates for these operations)",
        ),
        ("every other operation", "1.3", "image operations: CURRENT"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("virtualserver") && l.contains(ops))
            .unwrap_or_else(|| panic!("no {ops} in:\n{stdout}"));
        assert!(line.contains(version) && line.contains(verdict), "{line}");
    }
    assert!(
        stdout.contains(" 1.2* ") && stdout.contains(" 1.3* "),
        "{stdout}"
    );
    assert!(!stdout.contains(" 1.0* "), "{stdout}");
}

/// A tiny upstream answering every request with the given version list.
fn version_list_server(body: &'static str) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        // check-config and versions each make one request per service; two suffice.
        for _ in 0..2 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, handle)
}

#[test]
fn online_reads_the_live_list_and_warns_where_it_disagrees() {
    const LIST: &str = r#"{"versions":[
        {"id":"v1.3","status":"CURRENT"},
        {"id":"v1.2","status":"SUPPORTED","not_before":"2026-09-30"},
        {"id":"v1.1","status":"DEPRECATED","not_before":"2026-05-31"},
        {"id":"v1.0","status":"DEPRECATED","not_before":"2025-12-31"}]}"#;
    let (base, server) = version_list_server(LIST);
    let f = config("1.3", "", &base);
    let path = f.path().to_str().unwrap();
    let (code, _, stderr) = run(&[
        "check-config",
        "--config",
        path,
        "--today",
        "2026-06-01",
        "--online",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("2026-09-30") && stderr.contains("2026-08-31"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&["versions", "--config", path, "--online"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("live versions") && stdout.contains("v1.2"),
        "{stdout}"
    );
    server.join().unwrap();

    // Without --online nothing is fetched; an unreachable list is a warning, never fatal.
    let (code, _, stderr) = run(&["check-config", "--config", path, "--today", "2026-06-01"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&[
        "check-config",
        "--config",
        path,
        "--today",
        "2026-06-01",
        "--online",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("live version list not read"), "{stderr}");
}

/// Operation pins: each is judged against the catalog set it falls in (image operations have
/// dates; security groups have none, so no verdict), and the table says which pin applies to
/// which operations.
#[test]
fn operation_pins_are_judged_per_operation() {
    let ops = "[services.virtualserver.operation_versions]\n\
               \"POST /v1/servers/*/security-groups\" = \"1.0\"\n\
               \"POST /v1/images/*/import\" = \"1.0\"\n";
    let f = config("1.3", ops, SCP);
    let (code, stdout, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 1, "{stderr}");
    let import_key = "services.virtualserver.operation_versions.\"POST /v1/images/*/import\"";
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        error.contains(import_key)
            && error.contains("2025-12-31")
            && error.contains("image operations"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    let note = stderr
        .lines()
        .find(|l| l.starts_with("note:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        note.contains("security-groups") && note.contains("unknown"),
        "{stderr}"
    );
    for (ops, version, verdict) in [
        ("POST /v1/images/*/import", "1.0", "ENDED"),
        ("POST /v1/servers/*/security-groups", "1.0", "unknown"),
        ("every other operation", "1.3", "CURRENT"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("virtualserver") && l.contains(ops))
            .unwrap_or_else(|| panic!("no {ops} in:\n{stdout}"));
        assert!(line.contains(version) && line.contains(verdict), "{line}");
    }
    // Without the past-date pin it passes, the unknown one noted only.
    let f = config(
        "1.3",
        "[services.virtualserver.operation_versions]\n\"POST /v1/servers/*/security-groups\" = \"1.0\"\n",
        SCP,
    );
    let (code, _, stderr) = check(&f, "2026-06-01");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("warning") && !stderr.contains("error"),
        "{stderr}"
    );
}

/// A bad operation pin stops the load, naming the entry and the file.
#[test]
fn bad_operation_pins_name_the_key_and_the_file() {
    for (ops, says) in [
        ("\"post /v1/x\" = \"1.0\"", "methods match exactly"),
        ("\"POST /v1/x\" = \"one\"", "MAJOR.MINOR"),
        ("\"POST /v1/servers/*\" = \"1.0\"", "no request can match"),
        (
            "\"GET /v1/*/x\" = \"1.0\"\n\"GET /v1/images/*\" = \"1.1\"",
            "overlaps",
        ),
    ] {
        let extra = format!(
            "allow = [\"GET /v1/images/**\"]\n[services.virtualserver.operation_versions]\n{ops}\n"
        );
        let f = config("1.3", &extra, SCP);
        let (code, _, stderr) = check(&f, "2026-06-01");
        assert_eq!(code, 1, "{ops}: {stderr}");
        assert!(
            stderr.contains("services.virtualserver.operation_versions.\"")
                && stderr.contains(&f.path().display().to_string())
                && stderr.contains(says),
            "{ops}: {stderr}"
        );
    }
}
