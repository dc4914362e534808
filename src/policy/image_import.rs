//! Image import validation: which requests carry an image URL, and whether their body is fit to
//! forward. Pure; [`crate::layers::image_import`] does the bounded body read.
//!
//! Inspected: `POST /v1/images/{image_id}/import` (`url` required) and `POST /v1/images`
//! (`url` checked when present), on the path the upstream receives. The path is recognised
//! generously (after percent-decoding, `;` parameters, empty and dot segments, any letter case,
//! a trailing `/`), because recognising too much only means a valid body is read and forwarded
//! unchanged, while recognising too little would let a URL through unchecked.

use super::image_url::{self, Expect};
use super::json::{self, JsonError, Value};
use super::PolicyError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `POST /v1/images/{image_id}/import`
    Import,
    /// `POST /v1/images`
    Create,
}

impl Operation {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Operation::Import => "an image import (POST /v1/images/{image_id}/import)",
            Operation::Create => "an image creation (POST /v1/images)",
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(v as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Segments as a lenient server might resolve them.
fn resolved(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for seg in path.split(['/', '\\']) {
        let seg = seg.split(';').next().unwrap_or(seg);
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_ascii_lowercase()),
        }
    }
    out
}

fn classify(segs: &[String]) -> Option<Operation> {
    match segs {
        [v, images] if v == "v1" && images == "images" => Some(Operation::Create),
        [v, images, _, import] if v == "v1" && images == "images" && import == "import" => {
            Some(Operation::Import)
        }
        _ => None,
    }
}

/// The inspected operation `method` and the raw upstream `path` name, if any.
pub(crate) fn operation(method: &str, path: &str) -> Option<Operation> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    classify(&resolved(path)).or_else(|| classify(&resolved(&percent_decode(path))))
}

/// Checks a whole request body for `op`: a JSON object with no duplicate keys whose `url` is a
/// string obeying [`image_url::check`] (required for an import, checked when present on a
/// creation).
pub(crate) fn check_body(
    op: Operation,
    body: &[u8],
    expect: &Expect<'_>,
) -> Result<(), PolicyError> {
    let members = json::scan_object(body).map_err(|e| match e {
        JsonError::NotObject => PolicyError::JsonNotObject,
        JsonError::DuplicateKey { key } => PolicyError::DuplicateKey {
            key: key.chars().take(64).collect(),
        },
        e @ (JsonError::Invalid { .. } | JsonError::TooDeep) => PolicyError::InvalidJson {
            detail: e.to_string(),
        },
    })?;
    match (json::get(&members, "url"), op) {
        (None, Operation::Import) => Err(PolicyError::UrlMissing {
            operation: op.describe(),
        }),
        (None, Operation::Create) => Ok(()),
        (Some(Value::Other(kind)), _) => Err(PolicyError::UrlNotString { kind }),
        (Some(Value::String(raw)), _) => Ok(image_url::check(raw, expect)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn operations() {
        for (method, path, want) in [
            ("POST", "/v1/images/abc/import", Some(Operation::Import)),
            ("POST", "/v1/images", Some(Operation::Create)),
            ("POST", "/v1/images/", Some(Operation::Create)),
            ("post", "/v1/images/abc/import", Some(Operation::Import)),
            ("POST", "/v1/images/abc/import/", Some(Operation::Import)),
            ("POST", "/v1//images/abc/import", Some(Operation::Import)),
            ("POST", "/v1/./images/abc/import", Some(Operation::Import)),
            (
                "POST",
                "/v1/x/../images/abc/import",
                Some(Operation::Import),
            ),
            ("POST", "/V1/Images/abc/IMPORT", Some(Operation::Import)),
            ("POST", "/v1/images/abc/%69mport", Some(Operation::Import)),
            ("POST", "/v1/images%2Fabc%2Fimport", Some(Operation::Import)),
            ("POST", "/v1/images/abc/import;x=1", Some(Operation::Import)),
            ("POST", "/v1/images/abc", None),
            ("POST", "/v1/images/abc/export", None),
            ("POST", "/v1/servers", None),
            ("PUT", "/v1/images/abc/import", None),
            ("GET", "/v1/images", None),
            ("POST", "/v2/images/abc/import", None),
            ("POST", "/%zz/%", None),
        ] {
            assert_eq!(operation(method, path), want, "{method} {path}");
        }
    }

    fn code(op: Operation, body: &str) -> &'static str {
        let expect = Expect {
            region: Some("kr-west1"),
            env: Some("e"),
            account_id: Some(ACCT),
        };
        match check_body(op, body.as_bytes(), &expect) {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn bodies() {
        let good = format!("https://object-store.kr-west1.e.samsungsdscloud.com/{ACCT}:b/x.qcow2");
        use Operation::*;
        for (op, body, want) in [
            (Import, format!(r#"{{"url":"{good}"}}"#), "ok"),
            (
                Import,
                format!(r#" {{ "url" : "{good}" , "extra": [1] }} "#),
                "ok",
            ),
            (Import, "{}".into(), "url_missing"),
            (Create, r#"{"name":"n","os_distro":"ubuntu"}"#.into(), "ok"),
            (Create, format!(r#"{{"name":"n","url":"{good}"}}"#), "ok"),
            (
                Create,
                r#"{"name":"n","url":"http://x/y.qcow2"}"#.into(),
                "url_not_https",
            ),
            (Import, r#"{"url":5}"#.into(), "url_not_string"),
            (Import, r#"{"url":null}"#.into(), "url_not_string"),
            (
                Import,
                format!(r#"[{{"url":"{good}"}}]"#),
                "json_not_object",
            ),
            (
                Import,
                format!(r#"{{"url":"{good}","url":"{good}"}}"#),
                "duplicate_key",
            ),
            (
                Import,
                format!(r#"{{"url":"{good}","u\u0072l":"https://evil"}}"#),
                "duplicate_key",
            ),
            (Import, format!(r#"{{"url":"{good}""#), "invalid_json"),
            (Import, "url=https://x".into(), "invalid_json"),
            (
                Import,
                format!(r#"{{"url":"{}"}}"#, good.replace('/', "\\/")),
                "url_invalid_characters",
            ),
            (
                Import,
                format!(r#"{{"url":"{}"}}"#, good.replace(".qcow2", ".qcow2?x=1")),
                "url_has_query",
            ),
            // "URL" is another key: url is missing
            (Import, format!(r#"{{"URL":"{good}"}}"#), "url_missing"),
        ] {
            assert_eq!(code(op, &body), want, "{body}");
        }
    }
}
