//! One configuration builder for the tests, instead of a TOML template per file.
//!
//! [`TestConfig::new`] is the smallest useful proxy: both listeners on `127.0.0.1:0`, the
//! test access key, one default service `virtualserver` (pin 1.3, region kr-west1) at the
//! given upstream. Each section takes `key = value` lines; a line for a key already present
//! replaces it, so a test states only what it changes.

use std::path::Path;

use scp_auth_proxy::config::{self, Config, Overrides, Source};

use super::ACCESS_KEY;

#[derive(Clone, Debug)]
pub struct TestConfig {
    server: Section,
    credentials: Section,
    routing: Section,
    services: Vec<(String, Section)>,
    raw: Vec<String>,
}

/// `key = value` entries in order, one per key, then any sub-tables as written.
#[derive(Clone, Debug, Default)]
struct Section {
    entries: Vec<String>,
    tables: Vec<String>,
}

impl Section {
    /// Adds `text`: an entry starts at a `key =` line, and the lines after it that do not
    /// start one (a multi-line array) belong to it; an entry for a key already present
    /// replaces it. A table header (`[...]`) and everything after it is kept as written, and
    /// rendered after the entries so that later entries stay in this section.
    fn set(&mut self, text: &str) {
        let mut entries: Vec<String> = vec![];
        let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
        while let Some(line) = lines.next_if(|l| !l.trim_start().starts_with('[')) {
            match (key(line), entries.last_mut()) {
                (None, Some(last)) => {
                    last.push('\n');
                    last.push_str(line);
                }
                _ => entries.push(line.trim().to_owned()),
            }
        }
        let table: Vec<&str> = lines.collect();
        if !table.is_empty() {
            self.tables.push(table.join("\n"));
        }
        for e in entries {
            match key(&e).and_then(|k| self.entries.iter().position(|l| key(l) == Some(k))) {
                Some(i) => self.entries[i] = e,
                None => self.entries.push(e),
            }
        }
    }

    fn remove(&mut self, key_name: &str) {
        self.entries.retain(|l| key(l) != Some(key_name));
    }

    fn render(&self, header: &str, out: &mut String) {
        out.push_str(header);
        out.push('\n');
        for l in self.entries.iter().chain(&self.tables) {
            out.push_str(l);
            out.push('\n');
        }
    }
}

/// The key of a `key = value` line.
fn key(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || "_-.\"".contains(c);
    (!k.is_empty() && k.chars().all(bare)).then_some(k)
}

fn section(lines: &[&str]) -> Section {
    let mut s = Section::default();
    for l in lines {
        s.set(l);
    }
    s
}

impl TestConfig {
    pub fn new(upstream: &str) -> Self {
        Self {
            server: section(&["listen = \"127.0.0.1:0\"", "admin_listen = \"127.0.0.1:0\""]),
            credentials: section(&[&format!("access_key = \"{ACCESS_KEY}\"")]),
            routing: section(&["default_service = \"virtualserver\""]),
            services: vec![(
                "virtualserver".into(),
                section(&[
                    &format!("upstream = \"{upstream}\""),
                    "api_version = \"1.3\"",
                    "region = \"kr-west1\"",
                ]),
            )],
            raw: vec![],
        }
    }

    /// Lines for `[server]`.
    pub fn server(mut self, lines: &str) -> Self {
        self.server.set(lines);
        self
    }

    /// Lines for `[credentials]`.
    pub fn credentials(mut self, lines: &str) -> Self {
        self.credentials.set(lines);
        self
    }

    /// `secret_key_file = "PATH"` in `[credentials]`.
    pub fn secret_file(self, path: impl AsRef<Path>) -> Self {
        let line = format!("secret_key_file = \"{}\"", path.as_ref().display());
        self.credentials(&line)
    }

    /// Lines for `[routing]`.
    pub fn routing(mut self, lines: &str) -> Self {
        self.routing.set(lines);
        self
    }

    /// Lines for the last service added (`virtualserver` unless [`TestConfig::add_service`]).
    pub fn service(mut self, lines: &str) -> Self {
        if let Some((_, s)) = self.services.last_mut() {
            s.set(lines);
        }
        self
    }

    /// Lines for service `name` (added with only these lines when it is not there yet).
    pub fn service_named(mut self, name: &str, lines: &str) -> Self {
        match self.services.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => s.set(lines),
            None => self.services.push((name.into(), section(&[lines]))),
        }
        self
    }

    /// A further service at `upstream` pinned to `api_version`; later [`TestConfig::service`]
    /// lines go to it.
    pub fn add_service(mut self, name: &str, upstream: &str, api_version: &str) -> Self {
        self.services.push((
            name.into(),
            section(&[
                &format!("upstream = \"{upstream}\""),
                &format!("api_version = \"{api_version}\""),
            ]),
        ));
        self
    }

    /// Drops `key` from `section` (`server`, `credentials`, `routing` or a service's name), for
    /// a test of what happens without it.
    pub fn remove(mut self, section: &str, key_name: &str) -> Self {
        let s = match section {
            "server" => &mut self.server,
            "credentials" => &mut self.credentials,
            "routing" => &mut self.routing,
            name => match self.services.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => s,
                None => return self,
            },
        };
        s.remove(key_name);
        self
    }

    /// Text appended as it is (a sub-table such as `[services.virtualserver.retry]`).
    pub fn raw(mut self, text: &str) -> Self {
        self.raw.push(text.to_owned());
        self
    }

    pub fn toml(&self) -> String {
        let mut out = String::new();
        self.server.render("[server]", &mut out);
        self.credentials.render("[credentials]", &mut out);
        self.routing.render("[routing]", &mut out);
        for (name, s) in &self.services {
            s.render(&format!("[services.{name}]"), &mut out);
        }
        for r in &self.raw {
            out.push_str(r);
            out.push('\n');
        }
        out
    }

    /// Writes the TOML to `path`; returns the path as a string for `--config`.
    pub fn write(&self, path: impl AsRef<Path>) -> String {
        std::fs::write(path.as_ref(), self.toml()).unwrap();
        path.as_ref().display().to_string()
    }

    /// Writes it to a temp file and loads it as `--config FILE` would.
    pub fn load(&self) -> (Config, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        self.write(&path);
        let cfg = config::load(&Source::File(path), &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}\n{}", self.toml()));
        (cfg, dir)
    }
}
