//! The key pair the proxy signs with, and the handle that lets a reload swap it.
//!
//! The secret is read once into a [`SigningKey`] (a keyed HMAC state) and the raw bytes are
//! zeroized. Nothing here implements `Display`, and `Debug` prints placeholders only, so the
//! secret cannot reach a log line, an error or `check-config` by accident.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderValue;
use zeroize::Zeroizing;

use crate::config::CredentialsConfig;
use crate::signer::SigningKey;

/// The environment variable that may carry the secret instead of a file (read by
/// [`crate::env`]).
pub use crate::env::SECRET_KEY as SECRET_ENV;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no access key: set `credentials.access_key` or `credentials.access_key_file` (or SCP_PROXY_CREDENTIALS__ACCESS_KEY)")]
    MissingAccessKey,
    #[error(
        "no secret key: set the {SECRET_ENV} environment variable or `credentials.secret_key_file`"
    )]
    MissingSecret,
    #[error("{what} file {path} could not be read: {source}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} from {origin} is empty")]
    Empty { what: &'static str, origin: String },
    #[error("{what} from {origin} has leading or trailing whitespace (only one final newline is removed); fix the value")]
    Whitespace { what: &'static str, origin: String },
    #[error("{what} from {origin} must be printable ASCII")]
    NotAscii { what: &'static str, origin: String },
}

/// What one signed request needs, built once per key pair.
pub struct Credentials {
    pub key: SigningKey,
    pub access_key: String,
    pub access_key_header: HeaderValue,
    pub account_id: String,
    /// `None` when no account id is configured: the header is then not sent.
    pub account_id_header: Option<HeaderValue>,
    pub client_type: String,
    pub client_type_header: HeaderValue,
    /// When this pair was loaded (for the key-age metric).
    pub loaded_at: SystemTime,
    /// Where the secret came from, for messages (a path or the variable's name, never the value).
    pub secret_source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret", &"<redacted>")
            .field("account_id", &self.account_id)
            .field("client_type", &self.client_type)
            .field("secret_source", &self.secret_source)
            .finish()
    }
}

impl Credentials {
    /// Builds credentials from values in memory (the emulator's throwaway pair, tests).
    pub fn from_parts(
        access_key: &str,
        secret: &[u8],
        account_id: &str,
        client_type: &str,
        secret_source: &str,
    ) -> Result<Self, CredentialsError> {
        let header = |what: &'static str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| CredentialsError::NotAscii {
                what,
                origin: "the configuration".into(),
            })
        };
        Ok(Self {
            key: SigningKey::new(secret),
            access_key: access_key.to_owned(),
            access_key_header: header("access key", access_key)?,
            account_id: account_id.to_owned(),
            account_id_header: if account_id.is_empty() {
                None
            } else {
                Some(header("account id", account_id)?)
            },
            client_type: client_type.to_owned(),
            client_type_header: header("client type", client_type)?,
            loaded_at: SystemTime::now(),
            secret_source: secret_source.to_owned(),
        })
    }

    /// Reads the key pair that `cfg` points at. `secret_env` is the value of
    /// [`SECRET_ENV`], passed in so that tests do not depend on the process environment.
    pub fn load(
        cfg: &CredentialsConfig,
        secret_env: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        let access_key = match (&cfg.access_key_file, &cfg.access_key) {
            (Some(path), _) => {
                let raw = read_file("access key", path)?;
                let v = clean("access key", &path.display().to_string(), &raw)?;
                String::from_utf8(v.to_vec()).map_err(|_| CredentialsError::NotAscii {
                    what: "access key",
                    origin: path.display().to_string(),
                })?
            }
            (None, Some(ak)) => ak.clone(),
            (None, None) => return Err(CredentialsError::MissingAccessKey),
        };
        let (secret, origin) = match (secret_env, &cfg.secret_key_file) {
            (Some(v), _) => {
                let origin = format!("the {SECRET_ENV} environment variable");
                (
                    Zeroizing::new(clean("secret key", &origin, v.as_bytes())?.to_vec()),
                    origin,
                )
            }
            (None, Some(path)) => {
                let raw = read_file("secret key", path)?;
                let origin = path.display().to_string();
                (
                    Zeroizing::new(clean("secret key", &origin, &raw)?.to_vec()),
                    origin,
                )
            }
            (None, None) => return Err(CredentialsError::MissingSecret),
        };
        Self::from_parts(
            &access_key,
            &secret,
            &cfg.account_id,
            &cfg.client_type,
            &origin,
        )
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, CredentialsError> {
    // Warned, not refused: Kubernetes mounts Secrets 0644 unless told otherwise.
    if let Some(mode) = loose_mode(path) {
        tracing::warn!(
            file = %path.display(),
            mode = %format!("{mode:04o}"),
            "the {what} file is readable by group or others; make it 0400 (or 0440 owned by another user, read through the group, as Kubernetes' fsGroup with defaultMode: 0440 does)"
        );
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| CredentialsError::Unreadable {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// The permission bits of `path` (after symlinks, as Kubernetes' `..data` links are) when
/// others may read it, or its group may while the proxy owns it (the group read then serves no
/// one the proxy needs). A 0440 file owned by another user and read through the pod's
/// `fsGroup`, as the shipped manifests mount it, is fine.
pub fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let mode = meta.mode() & 0o7777;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own = meta.uid() == unsafe { libc::geteuid() };
        (mode & 0o004 != 0 || (own && mode & 0o040 != 0)).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Strips one trailing LF or CRLF (Kubernetes Secrets and `echo` add one); any other
/// surrounding whitespace, or nothing left, is an error naming the source.
pub fn clean<'a>(
    what: &'static str,
    origin: &str,
    raw: &'a [u8],
) -> Result<&'a [u8], CredentialsError> {
    let v = raw
        .strip_suffix(b"\r\n")
        .or_else(|| raw.strip_suffix(b"\n"))
        .unwrap_or(raw);
    if v.is_empty() {
        return Err(CredentialsError::Empty {
            what,
            origin: origin.into(),
        });
    }
    let ws = |b: &u8| b.is_ascii_whitespace();
    if v.first().is_some_and(ws) || v.last().is_some_and(ws) {
        return Err(CredentialsError::Whitespace {
            what,
            origin: origin.into(),
        });
    }
    Ok(v)
}

/// A shared, swappable handle: requests load the current pair without locking; a reload
/// stores a new one. In-flight requests keep the `Arc` they loaded.
#[derive(Clone, Debug)]
pub struct CredentialStore(Arc<ArcSwap<Credentials>>);

impl CredentialStore {
    pub fn new(c: Credentials) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(c)))
    }
    pub fn current(&self) -> arc_swap::Guard<Arc<Credentials>> {
        self.0.load()
    }
    /// The current pair as an owned `Arc`, to hold across an `.await`.
    pub fn snapshot(&self) -> Arc<Credentials> {
        self.0.load_full()
    }
    pub fn replace(&self, c: Credentials) {
        self.0.store(Arc::new(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> CredentialsConfig {
        CredentialsConfig {
            watch_interval: std::time::Duration::ZERO,
            access_key: Some("ak".into()),
            access_key_file: None,
            secret_key_file: Some(dir.join("secret")),
            account_id: String::new(),
            client_type: "Openapi".into(),
        }
    }

    #[test]
    fn trailing_newline_stripped_once() {
        assert_eq!(clean("s", "f", b"abc\n").unwrap(), b"abc");
        assert_eq!(clean("s", "f", b"abc\r\n").unwrap(), b"abc");
        assert!(matches!(
            clean("s", "f", b"abc\n\n"),
            Err(CredentialsError::Whitespace { .. })
        ));
        assert!(matches!(
            clean("s", "f", b" abc"),
            Err(CredentialsError::Whitespace { .. })
        ));
        assert!(matches!(
            clean("s", "f", b"abc\t"),
            Err(CredentialsError::Whitespace { .. })
        ));
        assert!(matches!(
            clean("s", "f", b"\n"),
            Err(CredentialsError::Empty { .. })
        ));
        assert!(matches!(
            clean("s", "f", b""),
            Err(CredentialsError::Empty { .. })
        ));
    }

    #[test]
    fn errors_name_the_file_or_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let err = Credentials::load(&c, None).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join("secret").display().to_string()),
            "{err}"
        );
        std::fs::write(dir.path().join("secret"), "\n").unwrap();
        let err = Credentials::load(&c, None).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains("secret"), "{err}");
        let mut no_ak = cfg(dir.path());
        no_ak.access_key = None;
        let err = Credentials::load(&no_ak, None).unwrap_err().to_string();
        assert!(err.contains("credentials.access_key"), "{err}");
        let mut none = cfg(dir.path());
        none.secret_key_file = None;
        let err = Credentials::load(&none, None).unwrap_err().to_string();
        assert!(
            err.contains(SECRET_ENV) && err.contains("secret_key_file"),
            "{err}"
        );
        let err = Credentials::load(&none, Some("  x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(SECRET_ENV), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn group_or_world_readable_files_are_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s\n").unwrap();
        for (mode, loose) in [
            (0o400, None),
            (0o600, None),
            (0o440, Some(0o440)),
            (0o404, Some(0o404)),
            (0o644, Some(0o644)),
            (0o620, None),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(loose_mode(&f), loose, "{mode:o}");
        }
        // This test owns the file, so a group read is loose too.
        // Through a symlink, as Kubernetes mounts them: the target's mode counts.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(loose_mode(&link), Some(0o644));
    }

    #[test]
    fn loads_and_never_debugs_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "sentinel-SECRET-value\n").unwrap();
        let mut c = cfg(dir.path());
        std::fs::write(dir.path().join("ak"), "file-ak\r\n").unwrap();
        c.access_key_file = Some(dir.path().join("ak"));
        let creds = Credentials::load(&c, None).unwrap();
        assert_eq!(creds.access_key, "file-ak");
        assert!(creds.account_id_header.is_none());
        let dbg = format!("{creds:?}");
        assert!(!dbg.contains("sentinel-SECRET-value"), "{dbg}");
        // The same signature as signing with the stripped secret directly.
        let input = crate::signer::SignInput {
            method: "GET",
            url_parts: &["http://h/"],
            timestamp: "1",
            access_key: "file-ak",
            account_id: "",
            client_type: "Openapi",
        };
        assert_eq!(
            creds.key.sign(&input).as_str(),
            crate::signer::sign(
                b"sentinel-SECRET-value",
                "GET",
                "http://h/",
                "1",
                "file-ak",
                "",
                "Openapi"
            )
        );
        // env wins over the file
        let from_env = Credentials::load(&c, Some("other\n")).unwrap();
        assert!(from_env.secret_source.contains(SECRET_ENV));
    }
}
