//! Hardening from the adversarial run (issue 13), through the real listener or binary: no
//! secret in configuration errors, warnings for loose key-file modes, request ids and log lines
//! a client cannot forge.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_scp-auth-proxy");
/// Shaped like an SCP secret key; must never appear in any output.
const SENTINEL: &str = "SENTINELsecretQk3f9ZPx7w2LmNbVcXz";

fn proxy_toml(upstream: &str, secret_file: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{extra_server}
[credentials]
access_key = "{ACCESS_KEY}"
secret_key_file = "{secret_file}"
watch_interval = "0s"
[routing]
default_service = "virtualserver"
[services.virtualserver]
upstream = "{upstream}"
api_version = "1.3"
region = "kr-west1"
"#
    )
}

fn write(dir: &tempfile::TempDir, name: &str, content: &str, mode: u32) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

fn check_config(path: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["check-config", "--config", path])
        .env_remove("SCP_SECRET_KEY")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all)
}

#[test]
fn check_config_never_prints_the_broken_files_content() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // `check-config --config <the secret file>`.
        (format!("{SENTINEL}\n"), "line 1, column"),
        // A secret pasted unquoted.
        (
            format!("[credentials]\nsecret_key = {SENTINEL}\n"),
            "line 2, column 14",
        ),
        // Pasted into a value of the wrong type.
        (
            format!("[server]\nmax_header_bytes = \"{SENTINEL}\"\n"),
            "server.max_header_bytes",
        ),
        (
            format!("[server]\nidle_timeout = \"{SENTINEL}\"\n"),
            "server.idle_timeout",
        ),
        (
            format!("[server]\nlisten = \"{SENTINEL}\"\n"),
            "server.listen",
        ),
    ];
    for (body, says) in cases {
        let path = write(&dir, "broken.toml", &body, 0o600);
        let (code, out) = check_config(&path);
        assert_eq!(code, 1, "{out}");
        assert!(
            !out.contains(SENTINEL),
            "{body:?} printed the secret:\n{out}"
        );
        assert!(!out.contains("SENTINEL"), "{out}");
        assert!(out.contains(&path), "the file is not named:\n{out}");
        assert!(out.contains(says), "{body:?}: {out}");
    }
}

/// The binary with text or JSON logs, its log collected; killed by PID when dropped.
struct Proxy {
    child: std::process::Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Proxy {
    fn start(config: &str, format: &str) -> Proxy {
        let mut child = Command::new(BIN)
            .args(["--config", config, "--log-format", format])
            .env_remove("SCP_SECRET_KEY")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("serving") {
                    let _ = tx.send(line.clone());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("did not start:\n{}", log.lock().unwrap());
        };
        // Text: `... serving addr=127.0.0.1:N ...`; JSON: `"addr":"127.0.0.1:N"`.
        let addr = line
            .split(['"', ' ', '='])
            .skip_while(|w| *w != "addr")
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {line}"));
        Proxy { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls (bounded) until the log holds `n` lines containing `needle`.
    fn wait_log(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(Instant::now() < deadline, "no {n}x {needle:?} in:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_config_never_logs_it_and_loose_key_files_are_warned() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    // 0644: what Kubernetes mounts without defaultMode.
    let secret = write(&dir, "secret-key", &format!("{SECRET}\n"), 0o644);
    let good = proxy_toml(&up.base(), &secret, "");
    let cfg = write(&dir, "proxy.toml", &good, 0o600);
    let p = tokio::task::spawn_blocking(move || Proxy::start(&cfg, "json"))
        .await
        .unwrap();
    let warning = "readable by group or others";
    let log = p.wait_log(warning, 1);
    let line = log.lines().find(|l| l.contains(warning)).unwrap();
    assert!(
        line.contains(&secret) && line.contains("\"0644\""),
        "{line}"
    );

    // On reload too.
    p.signal("HUP");
    p.wait_log("key pair reloaded", 1);
    p.wait_log(warning, 2);

    // A reload of a config with the secret pasted in: refused, and the line never printed.
    let broken = good.replace(
        "watch_interval = \"0s\"",
        &format!("watch_interval = \"0s\"\nsecret_key = {SENTINEL}"),
    );
    std::fs::write(dir.path().join("proxy.toml"), broken).unwrap();
    p.signal("HUP");
    let log = p.wait_log("reload failed", 1);
    assert!(!log.contains(SENTINEL), "{log}");
    assert!(!log.contains("SENTINEL"), "{log}");
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(
        line.contains("proxy.toml") && line.contains("line "),
        "{line}"
    );

    // Still serving with the previous pair.
    let (status, _, _) = send(&client(), get(p.addr, "/v1/images")).await;
    assert_eq!(status, 200);
    assert!(up.requests().iter().all(|r| r.signature_ok));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_and_log_values_cannot_forge_a_text_access_line() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = write(&dir, "secret-key", &format!("{SECRET}\n"), 0o400);
    let cfg = write(
        &dir,
        "proxy.toml",
        &proxy_toml(&up.base(), &secret, ""),
        0o600,
    );
    let p = tokio::task::spawn_blocking(move || Proxy::start(&cfg, "text"))
        .await
        .unwrap();
    let forged = r#"abc status=200 service="iam" path="/forged""#;
    let answer = raw(
        p.addr,
        format!(
            "GET /v1/images?q=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: {forged}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Replaced on the response and upstream, by a generated id.
    let returned = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("{answer}"))
        .trim()
        .to_owned();
    assert_ne!(returned, forged);
    let upstream_id = up.requests()[0].headers["x-request-id"].clone();
    assert_eq!(upstream_id, returned.as_str());

    // An acceptable id is kept as sent, and quoted in the line.
    let kept = "trace-0af7651916cd43dd8448eb211c80319c";
    let answer = raw(
        p.addr,
        format!(
            "GET /v1/images HTTP/1.1\r\nHost: x\r\nX-Request-Id: {kept}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        answer.contains(&format!("x-request-id: {kept}")),
        "{answer}"
    );

    let log = p.wait_log(" access: ", 2);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" access: ")).collect();
    let forged_line = lines[0];
    assert!(!forged_line.contains("/forged"), "{forged_line}");
    assert!(!forged_line.contains("service=\"iam\""), "{forged_line}");
    assert_eq!(forged_line.matches("status=").count(), 1, "{forged_line}");
    assert!(
        forged_line.contains(&format!("request_id=\"{returned}\"")),
        "{forged_line}"
    );
    assert!(
        forged_line.contains("request_id_replaced=true"),
        "{forged_line}"
    );
    assert!(forged_line.contains("path=\"/v1/images\""), "{forged_line}");
    assert!(forged_line.contains("method=\"GET\""), "{forged_line}");
    // Fixed precision: three decimals, always.
    let total = forged_line
        .split(' ')
        .find_map(|w| w.strip_prefix("total_ms="))
        .unwrap_or_else(|| panic!("{forged_line}"));
    let (int, frac) = total.split_once('.').unwrap_or_else(|| panic!("{total}"));
    assert!(int.parse::<u64>().is_ok() && frac.len() == 3, "{total}");
    let kept_line = lines[1];
    assert!(
        kept_line.contains(&format!("request_id=\"{kept}\"")),
        "{kept_line}"
    );
    assert!(!kept_line.contains("request_id_replaced"), "{kept_line}");
    // The audit record's text line quotes its strings too (the operation holds a space).
    let log = p.wait_log(" audit: ", 2);
    let audit = log.lines().find(|l| l.contains(" audit: ")).unwrap();
    assert!(
        audit.contains(&format!("request_id=\"{returned}\""))
            && audit.contains("operation=\"GET /v1/images\""),
        "{audit}"
    );
}
