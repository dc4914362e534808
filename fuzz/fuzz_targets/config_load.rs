//! Configuration loading (`config::load`, as `--config FILE` and `--profile` read it) on
//! arbitrary file text, and `Upstream::parse`.
//!
//! Every `\x01` byte of the input becomes a secret-shaped sentinel, so the fuzzer places
//! "secrets" anywhere: in values, unquoted, in comments, in broken lines. Asserts: no panic;
//! a syntax error or a type error (wrong kind of value, unknown key) never shows the sentinel
//! (only a key the file itself named may be echoed; a field's own check may quote the value it
//! refuses, as `allow` rules and upstream URLs do); a loaded configuration printed by `redacted` loads back to the same
//! configuration; an upstream that parses prints (`base`) as text that parses to the same
//! upstream, with a valid port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scp_auth_proxy::config::{self, ConfigError, Overrides, Source, Upstream};

const SENTINEL: &str = "SENTINEL-s3cr3t-9f2c";

/// What `default.toml` holds in profile mode: enough for a profile to load.
const BASE: &str = r#"
[credentials]
access_key = "ak"
[services.virtualserver]
upstream = "https://virtualserver.kr-west1.e.samsungsdscloud.com"
api_version = "1.3"
"#;

/// Whether the sentinel is (part of) a key of the parsed TOML, at any depth.
fn in_a_key(v: &toml::Value) -> bool {
    match v {
        toml::Value::Table(t) => t.iter().any(|(k, v)| k.contains("s3cr3t") || in_a_key(v)),
        toml::Value::Array(a) => a.iter().any(in_a_key),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == b'u' {
        if let Ok(s) = std::str::from_utf8(rest) {
            if let Ok(up) = Upstream::parse(s) {
                let again = Upstream::parse(&up.base).expect("an upstream's base parses");
                assert_eq!(again, up);
                assert!(
                    up.authority.port().is_none() || up.authority.port_u16().is_some_and(|p| p > 0)
                );
            }
        }
        return;
    }
    let text: Vec<u8> = rest
        .split(|&b| b == 1)
        .collect::<Vec<_>>()
        .join(SENTINEL.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let source = if mode % 2 == 0 {
        let path = dir.path().join("app.toml");
        std::fs::write(&path, &text).unwrap();
        Source::File(path)
    } else {
        std::fs::write(dir.path().join("default.toml"), BASE).unwrap();
        std::fs::write(dir.path().join("p.toml"), &text).unwrap();
        Source::Profile {
            name: "p".into(),
            dir: dir.path().to_path_buf(),
        }
    };
    match config::load(&source, &Overrides::default()) {
        Err(e @ ConfigError::Syntax { .. }) => {
            let shown = e.to_string();
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        // Type errors (wrong kind of value, unknown key) from serde; the proxy's own field
        // checks (`Kind::Message`) may quote the value they refuse, as validation does.
        Err(ConfigError::Load(e))
            if (*e)
                .clone()
                .into_iter()
                .all(|one| !matches!(one.kind, figment::error::Kind::Message(_))) =>
        {
            let shown = ConfigError::Load(e).to_string();
            let keyed = std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .is_some_and(|t| in_a_key(&toml::Value::Table(t)));
            assert!(keyed || !shown.contains("s3cr3t"), "{shown}");
        }
        Err(_) => {}
        // With the in-process emulator the upstreams are printed as `(in-process emulator)`.
        Ok(cfg) if cfg.emulator.in_process => {}
        Ok(cfg) => {
            // The effective configuration, printed, is a configuration that loads the same.
            // Less the secret's placeholder line (the secret comes from a file or the
            // environment, never the configuration).
            let printed: String = cfg
                .redacted("fuzz")
                .lines()
                .filter(|l| !l.starts_with("secret_key = \"<redacted>"))
                .map(|l| format!("{l}\n"))
                .collect();
            let path = dir.path().join("printed.toml");
            std::fs::write(&path, &printed).unwrap();
            let again = config::load(&Source::File(path.clone()), &Overrides::default())
                .unwrap_or_else(|e| panic!("redacted output does not load: {e}\n{printed}"));
            let mut again = again;
            again.sources = cfg.sources.clone();
            // Where the secret comes from is the caller's text (`# from ...`), not a key.
            again.credentials.secret_key_file = cfg.credentials.secret_key_file.clone();
            // `Config` has no `PartialEq`; its `Debug` shows every field.
            assert_eq!(format!("{again:?}"), format!("{cfg:?}"), "{printed}");
        }
    }
});
