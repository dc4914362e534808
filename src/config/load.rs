//! Where configuration comes from: files, the environment, flags, layered by figment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::Serialize;

use super::model::*;
use super::validate::from_figment;
use super::ConfigError;

/// Where configuration files come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `--config FILE`: that file alone.
    File(PathBuf),
    /// `--profile NAME [--config-dir DIR]`: `DIR/default.toml` then `DIR/NAME.toml`.
    Profile { name: String, dir: PathBuf },
}

impl Source {
    /// The files this source reads (or would, once they exist), for watching.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Source::File(p) => vec![p.clone()],
            Source::Profile { name, dir } => {
                vec![dir.join("default.toml"), dir.join(format!("{name}.toml"))]
            }
        }
    }
}

/// Values set on the command line; the highest layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
}

// ---------------------------------------------------------------- loading

/// Builds the layered figment for `source`.
pub fn figment(
    source: &Source,
    overrides: &Overrides,
) -> Result<(Figment, Vec<PathBuf>), ConfigError> {
    let mut fig = Figment::new();
    let mut files = Vec::new();
    match source {
        Source::File(path) => {
            require_file(path)?;
            check_syntax(path)?;
            fig = fig.merge(Toml::file_exact(path));
            files.push(path.clone());
        }
        Source::Profile { name, dir } => {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(ConfigError::Invalid {
                    key: "--profile".into(),
                    origin: String::new(),
                    message: format!(
                        "{name:?} is not a profile name; use a file stem in {}",
                        dir.display()
                    ),
                });
            }
            let default = dir.join("default.toml");
            if default.exists() {
                check_syntax(&default)?;
                fig = fig.merge(Toml::file_exact(&default));
                files.push(default);
            }
            let profile = dir.join(format!("{name}.toml"));
            require_file(&profile)?;
            check_syntax(&profile)?;
            fig = fig.merge(Toml::file_exact(&profile));
            files.push(profile);
        }
    }
    fig = fig
        .merge(crate::env::config_overrides(is_config_key))
        .merge(Serialized::default("server", overrides));
    Ok((fig, files))
}

pub(super) fn require_file(path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| ConfigError::File {
            path: path.to_path_buf(),
            source,
        })
}

/// Parses `path` as TOML before figment does, so a syntax error is reported by position only:
/// figment's (and toml's) own message quotes the offending line.
fn check_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let text = zeroize::Zeroizing::new(text);
    let syntax = |offset: usize, expected: String| {
        let (line, column) = line_column(&text, offset);
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            expected,
        }
    };
    let Ok(utf8) = std::str::from_utf8(&text) else {
        let offset = std::str::from_utf8(&text)
            .err()
            .map_or(0, |e| e.valid_up_to());
        return Err(syntax(offset, "UTF-8 text".into()));
    };
    match toml::from_str::<toml::Table>(utf8) {
        Ok(_) => Ok(()),
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            Err(syntax(offset, redact_toml_message(e.message())))
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

/// The parser's message on one line, with every quoted fragment longer than a token (such as
/// a duplicated key or an unknown escape) left out: only punctuation the parser expected stays.
pub(crate) fn redact_toml_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for (i, part) in m.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else if part.chars().count() <= 2 && !part.chars().any(|c| c.is_alphanumeric()) {
            out.push('`');
            out.push_str(part);
            out.push('`');
        } else {
            out.push_str("`…`");
        }
    }
    let out = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if out.is_empty() {
        "valid TOML".into()
    } else {
        out
    }
}

/// figment's error without the values it would quote: the key, where it came from, and what
/// kind of value was expected.
pub(super) fn describe_load(e: &figment::Error) -> String {
    use figment::error::{Actual, Kind};
    let kind_of = |a: &Actual| -> &'static str {
        match a {
            Actual::Bool(_) => "a boolean",
            Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
            Actual::Float(_) => "a float",
            Actual::Char(_) | Actual::Str(_) => "a string",
            Actual::Bytes(_) => "bytes",
            Actual::Unit | Actual::Option => "nothing",
            Actual::Seq => "an array",
            Actual::Map => "a table",
            _ => "another kind of value",
        }
    };
    let mut lines = Vec::new();
    for err in e.clone() {
        let what = match &err.kind {
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                format!("expected {expected}, found {}", kind_of(actual))
            }
            Kind::Message(m) if m.contains('\n') => {
                "could not be parsed (the text is not shown: it may hold a secret)".into()
            }
            Kind::UnknownVariant(_, expected) => {
                format!("unknown value; expected one of {}", expected.join(", "))
            }
            Kind::Unsupported(actual) => format!("unsupported value: {}", kind_of(actual)),
            Kind::UnsupportedKey(actual, expected) => {
                format!("unsupported key: {}, need {expected}", kind_of(actual))
            }
            // Key names, lengths and our own messages (which never quote values).
            other => other.to_string(),
        };
        let key = dotted(&err.path);
        let origin = match &err.metadata {
            Some(md) => match &md.source {
                Some(src) => format!(" (in {})", source_text(src)),
                None => format!(" (from {})", md.name),
            },
            None => String::new(),
        };
        lines.push(if key.is_empty() {
            format!("configuration{origin}: {what}")
        } else {
            format!("`{key}`{origin}: {what}")
        });
    }
    lines.join("\n")
}

/// A source as the user named it. figment's own `Display` shows a file relative to the
/// current directory (`../.tmpX` for `/tmp/.tmpX` when run from `/tmp/repo`), which is not the
/// path the user passed.
pub(crate) fn source_text(src: &figment::Source) -> String {
    match src {
        figment::Source::File(path) => path.display().to_string(),
        other => other.to_string(),
    }
}

/// Whether an environment key (lower-cased and dotted, as figment presents it) is meant for
/// the configuration: its first key is one of `Config`'s sections. Below that, serde's
/// `deny_unknown_fields` judges it like a file's key, so a misspelt override is an error
/// naming it. Kubernetes' service links (`SCP_PROXY_PORT`, `SCP_PROXY_SERVICE_HOST`, ...) have
/// no `__`, so their one key is never a section.
fn is_config_key(key: &str) -> bool {
    let section = key.split('.').next().unwrap_or_default();
    super::forms::sections().contains(&section)
}

/// Loads and validates configuration (but not the secret: see `credentials`).
pub fn load(source: &Source, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (fig, files) = figment(source, overrides)?;
    from_figment(&fig, files)
}

/// A key path as TOML writes it: `services.vs.operation_versions."GET /v1/x"`.
fn dotted(path: &[String]) -> String {
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    path.iter()
        .map(|k| if bare(k) { k.clone() } else { format!("{k:?}") })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_messages_keep_only_punctuation() {
        assert_eq!(
            redact_toml_message("invalid string\nexpected `\"`, `'`"),
            "invalid string; expected `\"`, `'`"
        );
        assert_eq!(
            redact_toml_message("duplicate key `secret`"),
            "duplicate key `…`"
        );
        assert_eq!(redact_toml_message(""), "valid TOML");
    }
}
