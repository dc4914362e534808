//! Image import URL rules: pure checks over the raw JSON string of `url` (the bytes between its
//! quotes, escapes not decoded).
//!
//! Because a backslash is refused, an accepted raw string holds no JSON escape, so what is
//! checked here is byte for byte what the cloud decodes: there is no second reading of the URL
//! that could differ from the one judged.
//!
//! Rules, checked in this order (the first broken one is reported):
//! 1. at most [`MAX_LEN`] characters (`url_too_long`);
//! 2. printable ASCII, no space, no backslash, and only characters RFC 3986 allows raw in a
//!    URL, `%` only in `%XX` escapes (`url_invalid_characters`);
//! 3. starts with `https://` (`url_not_https`);
//! 4. no user info (`url_has_userinfo`), no query (`url_has_query`), no fragment
//!    (`url_has_fragment`);
//! 5. the path has no `.`/`..` segment, no empty segment and no encoded `.`, `/` or `\`
//!    (`url_path_not_canonical`), so the account named by the first segment is the account
//!    the object store resolves;
//! 6. the path ends in `.qcow2`, case-sensitive (`url_not_qcow2`);
//! 7. the host is exactly `object-store.<region>.<env>.samsungsdscloud.com` or
//!    `object-store.private.<region>.<env>.samsungsdscloud.com`, no port (`url_wrong_host`), with
//!    the service's region (`url_wrong_region`) and, when the upstream host tells it, its env
//!    (`url_wrong_env`);
//! 8. when an account id is configured and the first path segment names an account (32 hex
//!    characters, alone or before `:`), it is that account (`url_wrong_account`).

/// SCP's documented maximum length of `url`.
pub(crate) const MAX_LEN: usize = 255;

/// What the URL is checked against: the routed service's region and env, and the configured
/// account id. `None` (or an empty account id) means "not known": that part is not compared.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expect<'a> {
    pub region: Option<&'a str>,
    pub env: Option<&'a str>,
    pub account_id: Option<&'a str>,
}

/// A broken URL rule. The message says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`url` is {len} characters long; SCP accepts at most {MAX_LEN}: shorten the bucket or object key")]
    TooLong { len: usize },
    #[error("`url` contains {found} at character {at}; use printable ASCII with no spaces, backslashes or JSON escapes, and percent-encode characters URLs do not allow raw")]
    InvalidCharacters { found: String, at: usize },
    #[error("`url` must start with https:// (the object store is only reachable over TLS)")]
    NotHttps,
    #[error("`url` must not carry user info (`user@` before the host); the import is authorised by the signed request, not by the URL")]
    HasUserinfo,
    #[error("`url` must not have a query (`?...`): the object URL must end in .qcow2")]
    HasQuery,
    #[error("`url` must not have a fragment (`#...`): the object URL must end in .qcow2")]
    HasFragment,
    #[error("`url` path {path:?} {reason}; write the plain object path, e.g. /<account_id>:<bucket>/<key>.qcow2")]
    PathNotCanonical { path: String, reason: &'static str },
    #[error("`url` must point to a .qcow2 file (lower case, nothing after it); got path {path:?}")]
    NotQcow2 { path: String },
    #[error("`url` host {host:?} is not an SCP Object Storage endpoint; use {expected}")]
    WrongHost { host: String, expected: String },
    #[error("`url` host {host:?} is in region {got:?}, but this service is in {want:?}: the image must sit in Object Storage of the same region ({expected})")]
    WrongRegion {
        host: String,
        got: String,
        want: String,
        expected: String,
    },
    #[error("`url` host {host:?} is in environment {got:?}, but this service is in {want:?} ({expected})")]
    WrongEnv {
        host: String,
        got: String,
        want: String,
        expected: String,
    },
    #[error("`url` names account {got:?}, but the proxy signs for account {want:?}: import only objects of your own account")]
    WrongAccount { got: String, want: String },
}

impl UrlError {
    pub fn code(&self) -> &'static str {
        match self {
            UrlError::TooLong { .. } => "url_too_long",
            UrlError::InvalidCharacters { .. } => "url_invalid_characters",
            UrlError::NotHttps => "url_not_https",
            UrlError::HasUserinfo => "url_has_userinfo",
            UrlError::HasQuery => "url_has_query",
            UrlError::HasFragment => "url_has_fragment",
            UrlError::PathNotCanonical { .. } => "url_path_not_canonical",
            UrlError::NotQcow2 { .. } => "url_not_qcow2",
            UrlError::WrongHost { .. } => "url_wrong_host",
            UrlError::WrongRegion { .. } => "url_wrong_region",
            UrlError::WrongEnv { .. } => "url_wrong_env",
            UrlError::WrongAccount { .. } => "url_wrong_account",
        }
    }
}

const HOST_SUFFIX: &str = ".samsungsdscloud.com";

/// Characters RFC 3986 allows raw in a URL (`%` only as the start of a `%XX` escape).
fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?#%".contains(c)
}

/// [`is_url_char`] for every byte, as a table: the accepting path of [`first_invalid`] runs per
/// import request, and a byte lookup costs a fraction of a string search per character.
const URL_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=:@/?#%";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// Whether every byte is a URL character and every `%` starts a `%XX` escape (no allocation).
fn all_valid(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if !URL_BYTES[b as usize] {
            return false;
        }
        if b == b'%'
            && !(raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return false;
        }
        i += 1;
    }
    true
}

/// The first character (index, description) that may not appear in an accepted URL.
fn first_invalid(raw: &str) -> Option<(usize, String)> {
    if all_valid(raw.as_bytes()) {
        return None;
    }
    let chars: Vec<char> = raw.chars().collect();
    chars.iter().enumerate().find_map(|(i, &c)| {
        let bad_escape = c == '%'
            && !(chars.get(i + 1).is_some_and(char::is_ascii_hexdigit)
                && chars.get(i + 2).is_some_and(char::is_ascii_hexdigit));
        let found = match c {
            ' ' => "a space".to_owned(),
            '\\' => "a backslash (JSON escapes are not accepted)".to_owned(),
            '%' if bad_escape => "a '%' that does not start a %XX escape".to_owned(),
            c if !c.is_ascii_graphic() => format!("{c:?}"),
            c if !is_url_char(c) => format!("{c:?} (percent-encode it)"),
            _ => return None,
        };
        Some((i, found))
    })
}

/// Checks the raw JSON string of an image URL against every rule.
pub(crate) fn check(raw: &str, expect: &Expect<'_>) -> Result<(), UrlError> {
    // Characters never outnumber bytes: count them only when the bytes are too many.
    if raw.len() > MAX_LEN {
        let len = raw.chars().count();
        if len > MAX_LEN {
            return Err(UrlError::TooLong { len });
        }
    }
    if let Some((at, found)) = first_invalid(raw) {
        return Err(UrlError::InvalidCharacters { found, at: at + 1 });
    }
    // From here on `raw` is printable ASCII: byte indices are character indices.
    let Some(rest) = raw.strip_prefix("https://") else {
        return Err(UrlError::NotHttps);
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(auth_end);
    if authority.contains('@') {
        return Err(UrlError::HasUserinfo);
    }
    if after.contains('?') {
        return Err(UrlError::HasQuery);
    }
    if after.contains('#') {
        return Err(UrlError::HasFragment);
    }
    let path = after;
    check_path_canonical(path)?;
    if !path.ends_with(".qcow2") {
        return Err(UrlError::NotQcow2 { path: path.into() });
    }
    check_host(authority, expect)?;
    check_account(path, expect)
}

fn check_path_canonical(path: &str) -> Result<(), UrlError> {
    let bad = |reason| {
        Err(UrlError::PathNotCanonical {
            path: path.into(),
            reason,
        })
    };
    let Some(segments) = path.strip_prefix('/') else {
        return bad("is empty");
    };
    if has_encoded_separator(path) {
        return bad("has an encoded '.', '/' or '\\'");
    }
    for seg in segments.split('/') {
        match seg {
            "" => return bad("has an empty segment (`//` or a trailing `/`)"),
            "." | ".." => return bad("has a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `path` holds `%2e`, `%2f` or `%5c` in any case (without a lowercased copy).
fn has_encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e') | (b'2', b'f') | (b'5', b'c')
            )
    })
}

fn expected_hosts(expect: &Expect<'_>) -> String {
    let region = expect.region.unwrap_or("<region>");
    let env = expect.env.unwrap_or("<env>");
    format!(
        "object-store.{region}.{env}{HOST_SUFFIX} or object-store.private.{region}.{env}{HOST_SUFFIX}"
    )
}

/// A lowercase LDH label that is not a reserved one: hyphens in its third and fourth places
/// (`xn--`, RFC 5891 §4.2.3.1) mark an IDNA label, which URL parsers decode or refuse, so the
/// object store could read another host than the one judged. SCP's hosts have none.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.get(2..4) != Some("--")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `region` and `env` of a host's `[private.]region.env` labels, both valid labels.
fn region_env(inner: &str) -> Option<(&str, &str)> {
    // At most three labels, so no Vec of them on the accepting path.
    let mut labels = inner.splitn(4, '.');
    let parts = (labels.next(), labels.next(), labels.next(), labels.next());
    match parts {
        (Some("private"), Some(region), Some(env), None)
        | (Some(region), Some(env), None, None)
            if region != "private" && is_label(region) && is_label(env) =>
        {
            Some((region, env))
        }
        _ => None,
    }
}

fn check_host(host: &str, expect: &Expect<'_>) -> Result<(), UrlError> {
    let wrong = || UrlError::WrongHost {
        host: host.into(),
        expected: expected_hosts(expect),
    };
    let inner = host
        .strip_prefix("object-store.")
        .and_then(|h| h.strip_suffix(HOST_SUFFIX))
        .ok_or_else(wrong)?;
    let Some((region, env)) = region_env(inner) else {
        return Err(wrong());
    };
    if let Some(want) = expect.region {
        if region != want {
            return Err(UrlError::WrongRegion {
                host: host.into(),
                got: region.into(),
                want: want.into(),
                expected: expected_hosts(expect),
            });
        }
    }
    if let Some(want) = expect.env {
        if env != want {
            return Err(UrlError::WrongEnv {
                host: host.into(),
                got: env.into(),
                want: want.into(),
                expected: expected_hosts(expect),
            });
        }
    }
    Ok(())
}

/// The account a path's first segment names: 32 hex characters, alone or before `:`.
pub(crate) fn path_account(path: &str) -> Option<&str> {
    let first = path.strip_prefix('/')?.split('/').next()?;
    let account = first.split_once(':').map_or(first, |(a, _)| a);
    (account.len() == 32 && account.bytes().all(|b| b.is_ascii_hexdigit())).then_some(account)
}

fn check_account(path: &str, expect: &Expect<'_>) -> Result<(), UrlError> {
    let Some(want) = expect.account_id.filter(|a| !a.is_empty()) else {
        return Ok(());
    };
    match path_account(path) {
        Some(got) if !got.eq_ignore_ascii_case(want) => Err(UrlError::WrongAccount {
            got: got.into(),
            want: want.into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ACCT: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn expect() -> Expect<'static> {
        Expect {
            region: Some("kr-west1"),
            env: Some("e"),
            account_id: Some(ACCT),
        }
    }

    fn code(url: &str) -> &'static str {
        match check(url, &expect()) {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    /// A valid URL of exactly `len` characters.
    fn url_of_len(len: usize) -> String {
        let head = format!("https://object-store.kr-west1.e.samsungsdscloud.com/{ACCT}:bucket/");
        let tail = ".qcow2";
        let fill = len - head.len() - tail.len();
        format!("{head}{}{tail}", "k".repeat(fill))
    }

    #[test]
    fn table() {
        let base = "https://object-store.kr-west1.e.samsungsdscloud.com";
        let ok = format!("{base}/{ACCT}:bucket/images/ubuntu-22.04.qcow2");
        let cases: Vec<(String, &str)> = vec![
            (ok.clone(), "ok"),
            // the docs' form, account then bucket as separate segments
            (format!("{base}/{ACCT}/bucket/ubuntu.qcow2"), "ok"),
            // private endpoint
            (
                format!(
                    "https://object-store.private.kr-west1.e.samsungsdscloud.com/{ACCT}:b/x.qcow2"
                ),
                "ok",
            ),
            // no account segment: nothing to compare
            (format!("{base}/bucket/x.qcow2"), "ok"),
            // upper-case hex is the same account
            (format!("{base}/{}:b/x.qcow2", ACCT.to_uppercase()), "ok"),
            // length boundary
            (url_of_len(255), "ok"),
            (url_of_len(256), "url_too_long"),
            // extension
            (format!("{base}/{ACCT}:b/x.QCOW2"), "url_not_qcow2"),
            (format!("{base}/{ACCT}:b/x.qcow2?x=1"), "url_has_query"),
            (format!("{base}/{ACCT}:b/x.qcow2?"), "url_has_query"),
            (format!("{base}/{ACCT}:b/x.qcow2#frag"), "url_has_fragment"),
            (format!("{base}/{ACCT}:b/x.qcow2.gz"), "url_not_qcow2"),
            (
                format!("{base}/{ACCT}:b/x.qcow2/"),
                "url_path_not_canonical",
            ),
            (format!("{base}/{ACCT}:b/x.img"), "url_not_qcow2"),
            (format!("{base}/{ACCT}:b/xqcow2"), "url_not_qcow2"),
            // scheme
            (ok.replacen("https", "http", 1), "url_not_https"),
            (ok.replacen("https", "HTTPS", 1), "url_not_https"),
            (ok.replacen("https://", "ftp://", 1), "url_not_https"),
            (ok.replacen("https://", "//", 1), "url_not_https"),
            ("".into(), "url_not_https"),
            // user info
            (
                ok.replacen("https://", "https://user:pw@", 1),
                "url_has_userinfo",
            ),
            (ok.replacen("https://", "https://@", 1), "url_has_userinfo"),
            // characters
            (
                format!("{base}/{ACCT}:b/my image.qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/x\\/y.qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/\\u0078.qcow2"),
                "url_invalid_characters",
            ),
            (format!("{base}/{ACCT}:b/é.qcow2"), "url_invalid_characters"),
            (
                format!("{base}/{ACCT}:b/x\t.qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/x\u{7f}.qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/\"x\".qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/x{{1}}.qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/<x>|^`.qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/[x].qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/x%zz.qcow2"),
                "url_invalid_characters",
            ),
            (
                format!("{base}/{ACCT}:b/x%2.qcow2"),
                "url_invalid_characters",
            ),
            (format!("{base}/{ACCT}:b/x%20y(1)~'!$&*+,;=@.qcow2"), "ok"),
            // path form
            (
                format!("{base}/{ACCT}:b/../x.qcow2"),
                "url_path_not_canonical",
            ),
            (
                format!("{base}/{ACCT}:b/./x.qcow2"),
                "url_path_not_canonical",
            ),
            (
                format!("{base}/{ACCT}:b//x.qcow2"),
                "url_path_not_canonical",
            ),
            (
                format!("{base}/{ACCT}:b/%2e%2e/x.qcow2"),
                "url_path_not_canonical",
            ),
            (
                format!("{base}/{ACCT}:b%2Fx.qcow2"),
                "url_path_not_canonical",
            ),
            (
                format!("{base}/{ACCT}:b/x%5C.qcow2"),
                "url_path_not_canonical",
            ),
            (base.into(), "url_path_not_canonical"),
            // region, env, host
            (ok.replace("kr-west1", "kr-east1"), "url_wrong_region"),
            (ok.replace(".e.", ".s."), "url_wrong_env"),
            (
                ok.replace("object-store.", "objectstore."),
                "url_wrong_host",
            ),
            (
                ok.replace("object-store.", "object-store.public."),
                "url_wrong_host",
            ),
            (
                ok.replace("object-store.kr-west1", "object-store.private"),
                "url_wrong_host",
            ),
            (
                ok.replace("samsungsdscloud.com", "samsungsdscloud.com.evil.io"),
                "url_wrong_host",
            ),
            (
                ok.replace("samsungsdscloud.com", "samsungsdscloud.com:443"),
                "url_wrong_host",
            ),
            (
                ok.replace("samsungsdscloud.com", "samsungsdscloud.com."),
                "url_wrong_host",
            ),
            (ok.replace("object-store", "OBJECT-STORE"), "url_wrong_host"),
            (ok.replace("kr-west1", "KR-WEST1"), "url_wrong_host"),
            (ok.replace("kr-west1", "kr.west1"), "url_wrong_host"),
            ("https://evil.example/x.qcow2".into(), "url_wrong_host"),
            ("https://[::1]/x.qcow2".into(), "url_invalid_characters"),
            ("https://127.0.0.1/x.qcow2".into(), "url_wrong_host"),
            // account
            (ok.replace(ACCT, OTHER), "url_wrong_account"),
            (format!("{base}/{OTHER}/b/x.qcow2"), "url_wrong_account"),
            // 31 or 33 hex characters do not name an account
            (format!("{base}/{}:b/x.qcow2", &ACCT[1..]), "ok"),
            (format!("{base}/{ACCT}0:b/x.qcow2"), "ok"),
        ];
        for (url, want) in &cases {
            assert_eq!(code(url), *want, "{url}");
        }
    }

    /// Found by the image_url fuzz target: a region or env label with hyphens in its third and
    /// fourth places (`xn--...`, an IDNA label) was accepted although the `url` crate refuses
    /// (or would decode) the host. Such labels are refused as a wrong host now.
    #[test]
    fn idna_and_reserved_labels_are_wrong_hosts() {
        let none = Expect::default();
        for host in [
            "object-store.private.ke--------e.xn----------------------------e.samsungsdscloud.com",
            "object-store.xn--kr-west1.e.samsungsdscloud.com",
            "object-store.kr-west1.xn--e.samsungsdscloud.com",
            "object-store.ab--cd.e.samsungsdscloud.com",
        ] {
            let url = format!("https://{host}/b.qcow2");
            assert_eq!(
                check(&url, &none).unwrap_err().code(),
                "url_wrong_host",
                "{url}"
            );
        }
        // Hyphens elsewhere are fine (SCP's regions have them).
        let url = "https://object-store.kr-west1.e.samsungsdscloud.com/b.qcow2";
        assert_eq!(check(url, &none), Ok(()));
    }

    #[test]
    fn unknown_region_env_or_account_are_not_compared() {
        let none = Expect::default();
        let url = format!("https://object-store.kr-south2.g.samsungsdscloud.com/{OTHER}:b/x.qcow2");
        assert_eq!(check(&url, &none), Ok(()));
        let no_env = Expect {
            env: None,
            ..expect()
        };
        let url = format!("https://object-store.kr-west1.s.samsungsdscloud.com/{ACCT}:b/x.qcow2");
        assert_eq!(check(&url, &no_env), Ok(()));
        let empty_account = Expect {
            account_id: Some(""),
            ..expect()
        };
        let url = format!("https://object-store.kr-west1.e.samsungsdscloud.com/{OTHER}:b/x.qcow2");
        assert_eq!(check(&url, &empty_account), Ok(()));
        // the host shape is still required
        assert_eq!(
            check("https://example.com/x.qcow2", &none)
                .unwrap_err()
                .code(),
            "url_wrong_host"
        );
    }

    #[test]
    fn messages_say_what_to_fix() {
        let e = check(&url_of_len(256), &expect()).unwrap_err();
        assert!(
            e.to_string().contains("256") && e.to_string().contains("255"),
            "{e}"
        );
        let e = check(
            "https://object-store.kr-east1.e.samsungsdscloud.com/b/x.qcow2",
            &expect(),
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("kr-east1") && m.contains("object-store.kr-west1.e.samsungsdscloud.com"),
            "{m}"
        );
        let e = check(
            &format!("https://object-store.kr-west1.e.samsungsdscloud.com/{OTHER}:b/x.qcow2"),
            &expect(),
        )
        .unwrap_err();
        assert!(e.to_string().contains(OTHER) && e.to_string().contains(ACCT));
    }

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("https://".to_owned()),
            Just("http://".to_owned()),
            Just("object-store.".to_owned()),
            Just("private.".to_owned()),
            Just("kr-west1.".to_owned()),
            Just("kr-east1.".to_owned()),
            Just("e.".to_owned()),
            Just("s.".to_owned()),
            Just("samsungsdscloud.com".to_owned()),
            Just("/".to_owned()),
            Just(":".to_owned()),
            Just("@".to_owned()),
            Just("?".to_owned()),
            Just("#".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just(".qcow2".to_owned()),
            Just(".QCOW2".to_owned()),
            Just(ACCT.to_owned()),
            Just(OTHER.to_owned()),
            "[a-zA-Z0-9._~-]{1,40}",
            "[ -~]{1,3}",
            "\\PC{1,2}",
        ]
    }

    /// Mostly well-formed URLs, with random pieces mixed in, so both verdicts occur often.
    fn candidate() -> impl Strategy<Value = String> {
        let valid_prefix = prop_oneof![
            Just("https://object-store.kr-west1.e.samsungsdscloud.com/".to_owned()),
            Just("https://object-store.private.kr-west1.e.samsungsdscloud.com/".to_owned()),
            Just(format!(
                "https://object-store.kr-west1.e.samsungsdscloud.com/{ACCT}:"
            )),
            Just(String::new()),
        ];
        (
            valid_prefix,
            proptest::collection::vec(piece(), 0..12),
            "[a-z0-9/]{0,300}",
            prop::bool::ANY,
        )
            .prop_map(|(p, pieces, filler, qcow)| {
                let mut s = p;
                s.push_str(&pieces.concat());
                s.push_str(&filler);
                if qcow {
                    s.push_str(".qcow2");
                }
                s
            })
    }

    /// The generator below yields accepted URLs often enough for the property to mean something.
    #[test]
    fn candidates_are_often_accepted() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = candidate();
        let accepted = (0..2000)
            .filter(|_| {
                let s = strategy.new_tree(&mut runner).unwrap().current();
                check(&s, &expect()).is_ok()
            })
            .count();
        assert!(accepted > 100, "only {accepted} of 2000 accepted");
    }

    /// The checks as they were before the accepting path stopped allocating: the reference
    /// the fast ones are compared with.
    mod slow {
        use super::super::{is_label, is_url_char};

        pub(super) fn first_invalid(raw: &str) -> Option<usize> {
            let chars: Vec<char> = raw.chars().collect();
            chars.iter().enumerate().position(|(i, &c)| {
                let bad_escape = c == '%'
                    && !(chars.get(i + 1).is_some_and(char::is_ascii_hexdigit)
                        && chars.get(i + 2).is_some_and(char::is_ascii_hexdigit));
                bad_escape || !c.is_ascii_graphic() || !is_url_char(c)
            })
        }

        pub(super) fn has_encoded_separator(path: &str) -> bool {
            let lower = path.to_ascii_lowercase();
            lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c")
        }

        pub(super) fn region_env(inner: &str) -> Option<(&str, &str)> {
            let labels: Vec<&str> = inner.split('.').collect();
            let (region, env) = match labels.as_slice() {
                ["private", region, env] | [region, env] if *region != "private" => (*region, *env),
                _ => return None,
            };
            (is_label(region) && is_label(env)).then_some((region, env))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every accepted URL matches the spec's pattern `.*\.qcow2$`, fits in 255 characters,
        /// and is an https URL the `url` crate reads back unchanged, with the expected host, no
        /// user info, query or fragment, and no account but ours.
        #[test]
        fn accepted_urls_match_the_spec(s in candidate()) {
            let exp = expect();
            if check(&s, &exp).is_ok() {
                prop_assert!(s.chars().count() <= MAX_LEN);
                prop_assert!(s.ends_with(".qcow2"));
                prop_assert!(s.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'));
                let u = url::Url::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(u.as_str(), s.as_str());
                prop_assert_eq!(u.scheme(), "https");
                prop_assert_eq!(u.username(), "");
                prop_assert!(u.password().is_none());
                prop_assert!(u.query().is_none() && u.fragment().is_none());
                prop_assert!(u.port().is_none());
                let host = u.host_str().unwrap_or_default();
                prop_assert!(
                    host == "object-store.kr-west1.e.samsungsdscloud.com"
                        || host == "object-store.private.kr-west1.e.samsungsdscloud.com",
                    "{}", host
                );
                if let Some(a) = path_account(u.path()) {
                    prop_assert!(a.eq_ignore_ascii_case(ACCT));
                }
            }
        }

        /// The allocation-free checks agree with the char-by-char, lowercasing and Vec-of-labels
        /// code they replaced, on URL-like strings, any printable text and host-like labels.
        #[test]
        fn fast_checks_agree_with_the_slow_ones(
            s in prop_oneof![
                candidate(),
                "\\PC{0,300}",
                "[ -~]{0,40}",
                "([a-z0-9/.-]|%|%[0-9a-fA-F]|%2[eEfF]|%5[cC]){0,12}",
            ],
            inner in "(private|kr-west1|e|-e|e-|E|)(\\.(private|kr-west1|e|-e|e-|E|)){0,3}",
        ) {
            prop_assert_eq!(all_valid(s.as_bytes()), slow::first_invalid(&s).is_none());
            prop_assert_eq!(has_encoded_separator(&s), slow::has_encoded_separator(&s));
            prop_assert_eq!(region_env(&inner), slow::region_env(&inner));
        }

        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = check(&s, &expect());
        }

        #[test]
        fn length_boundary(len in 100usize..=400) {
            let s = url_of_len(len);
            prop_assert_eq!(check(&s, &expect()).is_ok(), len <= MAX_LEN);
        }
    }
}
