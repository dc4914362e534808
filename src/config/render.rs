//! `check-config`'s view of the configuration: the effective values as TOML, no secret.
//!
//! Rendered from the same structs the files are read into (their `Serialize`, so keys appear
//! in the order the structs declare them), so every key shows, with the value it has after
//! defaults, files, environment and flags.

use super::model::Config;

impl Config {
    /// The effective configuration as TOML, with no secret in it: `Config` holds none, and
    /// the secret's place says only where it comes from. Operation pins are listed in the
    /// order they are tried.
    pub fn redacted(&self, secret_source: &str) -> String {
        let mut shown = self.clone();
        if self.emulator.in_process {
            for s in &mut shown.services {
                s.upstream.base = "(in-process emulator)".into();
            }
        }
        let body = match toml::to_string(&shown) {
            Ok(b) => b,
            // Every field is a string, number, bool, table or array of them.
            Err(_) => "# (the configuration could not be shown)\n".into(),
        };
        let secret = format!("secret_key = \"<redacted> (from {secret_source})\"\n");
        let body = match body.split_once("[credentials]\n") {
            Some((before, after)) => format!("{before}[credentials]\n{secret}{after}"),
            None => format!("{body}\n# {secret}"),
        };
        format!(
            "# files: {}\n# operation_versions: the first that matches a request applies\n\n{body}",
            self.sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
