//! `check-config`'s view of the configuration: the effective values as TOML, no secret.
//!
//! Rendered from the same structs the files are read into (their `Serialize`), so every key
//! shows, with the value it has after defaults, files, environment and flags.

use super::model::{sections, Config};

impl Config {
    /// The effective configuration as TOML, with no secret in it: `Config` holds none, and
    /// the secret's place says only where it comes from.
    pub fn redacted(&self, secret_source: &str) -> String {
        let mut o = format!(
            "# files: {}\n",
            self.sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for s in self
            .services
            .iter()
            .filter(|s| s.operation_versions.len() > 1)
        {
            let order: Vec<&str> = s
                .operation_versions
                .iter()
                .map(|o| o.rule.text.as_str())
                .collect();
            o.push_str(&format!(
                "# services.{}.operation_versions are tried in this order: {}\n",
                s.name,
                order.join(", ")
            ));
        }
        let mut view = match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => t,
            // Every field is a string, number, bool, table or array of them.
            Ok(_) | Err(_) => return format!("{o}# (the configuration could not be shown)\n"),
        };
        if let Some(toml::Value::Table(c)) = view.get_mut("credentials") {
            c.insert(
                "secret_key".into(),
                format!("<redacted> (from {secret_source})").into(),
            );
        }
        if self.emulator.in_process {
            if let Some(toml::Value::Table(all)) = view.get_mut("services") {
                for (_, svc) in all.iter_mut() {
                    if let toml::Value::Table(svc) = svc {
                        svc.insert("upstream".into(), "(in-process emulator)".into());
                    }
                }
            }
        }
        // Sections in the order `Config` declares them; keys within a section sorted.
        for section in sections() {
            let Some(value) = view.remove(*section) else {
                continue;
            };
            let mut one = toml::Table::new();
            one.insert((*section).to_owned(), value);
            o.push('\n');
            o.push_str(&toml::to_string(&one).unwrap_or_default());
        }
        o
    }
}
