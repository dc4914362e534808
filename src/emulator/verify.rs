//! Request authentication the way SCP's gateway does it, as a pure function over what arrived.
//!
//! The URL that is verified is built here from the request as received: `scheme://` + the
//! `Host` header (or, for HTTP/2, the `:authority`) + the raw request target, with `?query`
//! exactly when the target had a `?`. Nothing is decoded or re-encoded, and nothing is taken
//! from the proxy's own code path: if a byte of the URL changed after signing (a `%2F`
//! re-escaped to `%252F`), the signature does not match. Only the HMAC itself comes from
//! [`crate::signer`].
//!
//! Checks, in order: the four required headers are present (once each), the access key is the
//! known one, `Scp-AccountId` (absent counts as `""`) is the expected account, `Scp-Timestamp`
//! is within the window either side of now, and `Scp-Signature` matches.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderName, Method, StatusCode, Uri};

use super::response::ScpError;
use crate::signer::{timestamp_ms, SignInput, SigningKey};

pub(crate) const SCP_ACCESSKEY: HeaderName = HeaderName::from_static("scp-accesskey");
pub(crate) const SCP_TIMESTAMP: HeaderName = HeaderName::from_static("scp-timestamp");
pub(crate) const SCP_SIGNATURE: HeaderName = HeaderName::from_static("scp-signature");
pub(crate) const SCP_CLIENTTYPE: HeaderName = HeaderName::from_static("scp-clienttype");
pub(crate) const SCP_ACCOUNTID: HeaderName = HeaderName::from_static("scp-accountid");

/// What one request is checked against. Borrowed, so a reload can swap the key between
/// requests without a lock held across one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verifier<'a> {
    /// `http` for the emulator as it serves; `https` to check vectors signed for the cloud.
    pub scheme: &'a str,
    pub access_key: &'a str,
    pub account_id: &'a str,
    pub key: &'a SigningKey,
    /// Accepted distance between `Scp-Timestamp` and now, either side.
    pub window: Duration,
}

/// Why a request was not authenticated. Every variant becomes a 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// Required headers that were not sent, by their SCP names.
    MissingHeaders(Vec<&'static str>),
    DuplicateHeader(&'static str),
    /// A header value that is not visible ASCII.
    InvalidHeader(&'static str),
    MissingHost,
    UnknownAccessKey {
        sent: String,
    },
    AccountMismatch {
        sent: String,
        expected: String,
    },
    InvalidTimestamp {
        sent: String,
    },
    StaleTimestamp {
        sent: u64,
        now: u64,
        window: Duration,
    },
    /// The string the emulator signed; it holds no secret.
    SignatureMismatch {
        string_to_sign: String,
    },
}

impl AuthError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            AuthError::MissingHeaders(_) => "Authentication.MissingHeader",
            AuthError::DuplicateHeader(_)
            | AuthError::InvalidHeader(_)
            | AuthError::MissingHost => "Authentication.InvalidHeader",
            AuthError::UnknownAccessKey { .. } => "Authentication.UnknownAccessKey",
            AuthError::AccountMismatch { .. } => "Authentication.AccountMismatch",
            AuthError::InvalidTimestamp { .. } => "Authentication.InvalidTimestamp",
            AuthError::StaleTimestamp { .. } => "Authentication.TimestampOutOfWindow",
            AuthError::SignatureMismatch { .. } => "Authentication.SignatureMismatch",
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            AuthError::MissingHeaders(names) => format!(
                "missing required header(s): {}; every request except GET / must be signed \
                 (Scp-Accesskey, Scp-Timestamp, Scp-Signature, Scp-ClientType)",
                names.join(", ")
            ),
            AuthError::DuplicateHeader(name) => format!("{name} was sent more than once"),
            AuthError::InvalidHeader(name) => {
                format!("{name} is not a printable ASCII header value")
            }
            AuthError::MissingHost => {
                "no Host header: the signed URL is http:// + Host + the request target".into()
            }
            AuthError::UnknownAccessKey { sent } => format!(
                "Scp-Accesskey {sent:?} is not an access key this emulator knows \
                 (start it with --access-key, or use the key it was given)"
            ),
            AuthError::AccountMismatch { sent, expected } => format!(
                "Scp-AccountId {sent:?} does not match the account {expected:?} this emulator \
                 expects (an absent Scp-AccountId counts as \"\")"
            ),
            AuthError::InvalidTimestamp { sent } => format!(
                "Scp-Timestamp {sent:?} is not milliseconds since the Unix epoch \
                 (a decimal number such as 1764190000123)"
            ),
            AuthError::StaleTimestamp { sent, now, window } => {
                let (dist, side) = if sent > now {
                    (sent - now, "ahead of")
                } else {
                    (now - sent, "behind")
                };
                format!(
                    "Scp-Timestamp {sent} is {} {side} the emulator's clock ({now}); a signature \
                     is accepted within {} either side: sign every request with a fresh \
                     timestamp and check the clock",
                    humantime::format_duration(Duration::from_millis(dist)),
                    humantime::format_duration(*window),
                )
            }
            AuthError::SignatureMismatch { string_to_sign } => format!(
                "Scp-Signature does not match. The emulator computed HMAC-SHA256 over this \
                 string-to-sign (METHOD + URL + Scp-Timestamp + Scp-Accesskey + Scp-AccountId + \
                 Scp-ClientType, the URL being http:// + Host + the request target exactly as \
                 received): {string_to_sign:?}. Compare it with what the client signed; if they \
                 are equal, the secret key differs"
            ),
        }
    }

    pub(crate) fn to_error(&self) -> ScpError {
        ScpError::new(
            StatusCode::UNAUTHORIZED,
            self.code(),
            "Unauthorized",
            self.detail(),
        )
    }
}

/// The value of `name`, once; `None` when absent.
fn one<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    display: &'static str,
) -> Result<Option<&'h str>, AuthError> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(AuthError::DuplicateHeader(display)),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| AuthError::InvalidHeader(display)),
    }
}

impl Verifier<'_> {
    /// Checks one request as received. `now` is the emulator's clock.
    pub(crate) fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let access_key = one(headers, &SCP_ACCESSKEY, "Scp-Accesskey")?;
        let timestamp = one(headers, &SCP_TIMESTAMP, "Scp-Timestamp")?;
        let signature = one(headers, &SCP_SIGNATURE, "Scp-Signature")?;
        let client_type = one(headers, &SCP_CLIENTTYPE, "Scp-ClientType")?;
        let (Some(access_key), Some(timestamp), Some(signature), Some(client_type)) =
            (access_key, timestamp, signature, client_type)
        else {
            let missing = [
                ("Scp-Accesskey", access_key.is_none()),
                ("Scp-Timestamp", timestamp.is_none()),
                ("Scp-Signature", signature.is_none()),
                ("Scp-ClientType", client_type.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.then_some(n))
            .collect();
            return Err(AuthError::MissingHeaders(missing));
        };
        let account_id = one(headers, &SCP_ACCOUNTID, "Scp-AccountId")?.unwrap_or("");

        if access_key != self.access_key {
            return Err(AuthError::UnknownAccessKey {
                sent: access_key.to_owned(),
            });
        }
        if account_id != self.account_id {
            return Err(AuthError::AccountMismatch {
                sent: account_id.to_owned(),
                expected: self.account_id.to_owned(),
            });
        }
        let sent_ms = parse_millis(timestamp).ok_or_else(|| AuthError::InvalidTimestamp {
            sent: timestamp.to_owned(),
        })?;
        let now_ms = timestamp_ms(now);
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        if sent_ms.abs_diff(now_ms) > window_ms {
            return Err(AuthError::StaleTimestamp {
                sent: sent_ms,
                now: now_ms,
                window: self.window,
            });
        }

        let host = match one(headers, &header::HOST, "Host")? {
            Some(h) => h,
            // HTTP/2 carries the authority in the URI instead of a Host header.
            None => uri
                .authority()
                .map(|a| a.as_str())
                .ok_or(AuthError::MissingHost)?,
        };
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let input = SignInput {
            method: method.as_str(),
            url_parts: &[self.scheme, "://", host, target],
            timestamp,
            access_key,
            account_id,
            client_type,
        };
        if self.key.verify(&input, signature) {
            Ok(())
        } else {
            Err(AuthError::SignatureMismatch {
                string_to_sign: input.string_to_sign(),
            })
        }
    }
}

/// Decimal milliseconds, digits only.
fn parse_millis(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::vectors::{all as vectors, Vector};
    use http::HeaderValue;

    /// A request rebuilt from a vector's URL as a server receives it: Host = authority,
    /// target = path?query, headers as a client sends them.
    struct Received {
        scheme: String,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    }

    fn receive(v: &Vector) -> Received {
        let (scheme, rest) = v.url.split_once("://").expect("absolute url");
        let cut = rest.find('/').unwrap_or(rest.len());
        let (authority, target) = rest.split_at(cut);
        let target = if target.is_empty() { "/" } else { target };
        let mut headers = HeaderMap::new();
        let h = |s: &str| HeaderValue::from_str(s).expect("header value");
        headers.insert(header::HOST, h(authority));
        headers.insert(SCP_ACCESSKEY, h(&v.access_key));
        headers.insert(SCP_TIMESTAMP, h(&v.timestamp));
        headers.insert(SCP_SIGNATURE, h(&v.signature));
        headers.insert(SCP_CLIENTTYPE, h(&v.client_type));
        if !v.account_id.is_empty() {
            headers.insert(SCP_ACCOUNTID, h(&v.account_id));
        }
        Received {
            scheme: scheme.to_owned(),
            method: v.method.parse().expect("method"),
            uri: target.parse().expect("origin-form target"),
            headers,
        }
    }

    fn at(ts: &str) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ts.parse().expect("timestamp"))
    }

    fn check(v: &Vector, r: &Received, secret: &[u8], now: SystemTime) -> Result<(), AuthError> {
        let key = SigningKey::new(secret);
        Verifier {
            scheme: &r.scheme,
            access_key: &v.access_key,
            account_id: &v.account_id,
            key: &key,
            window: Duration::from_secs(15 * 60),
        }
        .verify(&r.method, &r.uri, &r.headers, now)
    }

    #[test]
    fn accepts_every_independent_vector() {
        for v in vectors() {
            let r = receive(&v);
            assert_eq!(
                check(&v, &r, v.secret_key.as_bytes(), at(&v.timestamp)),
                Ok(()),
                "{}",
                v.name
            );
        }
    }

    #[test]
    fn mismatch_shows_the_vectors_string_to_sign_and_no_secret() {
        for v in vectors() {
            let r = receive(&v);
            let err = check(&v, &r, b"wrong-secret", at(&v.timestamp)).unwrap_err();
            assert_eq!(
                err,
                AuthError::SignatureMismatch {
                    string_to_sign: v.string_to_sign.clone()
                },
                "{}",
                v.name
            );
            let detail = err.to_error().detail;
            assert!(!detail.contains(&v.secret_key), "{}: {detail}", v.name);
        }
    }

    #[test]
    fn one_changed_byte_of_the_received_url_is_rejected() {
        for v in vectors() {
            let mut r = receive(&v);
            let now = at(&v.timestamp);
            // Scheme: the vectors signed for https are not valid when served as http.
            let other = if r.scheme == "https" { "http" } else { "https" };
            let scheme = std::mem::replace(&mut r.scheme, other.into());
            assert!(matches!(
                check(&v, &r, v.secret_key.as_bytes(), now),
                Err(AuthError::SignatureMismatch { .. })
            ));
            r.scheme = scheme;
            // Host with a different case.
            let mut r2 = receive(&v);
            let original = r2.headers[header::HOST].to_str().unwrap().to_owned();
            let host = original.to_uppercase();
            if host != original {
                r2.headers
                    .insert(header::HOST, HeaderValue::from_str(&host).unwrap());
                assert!(check(&v, &r2, v.secret_key.as_bytes(), now).is_err());
            }
            // Target: an added trailing '?' is a different URL.
            let pq = r.uri.path_and_query().unwrap().as_str().to_owned();
            if !pq.contains('?') {
                r.uri = format!("{pq}?").parse().unwrap();
                assert!(
                    check(&v, &r, v.secret_key.as_bytes(), now).is_err(),
                    "{}",
                    v.name
                );
            }
        }
        let v = vectors()
            .into_iter()
            .find(|v| v.url.contains("%2F"))
            .expect("a vector with %2F");
        let mut r = receive(&v);
        let reescaped = r
            .uri
            .path_and_query()
            .unwrap()
            .as_str()
            .replace("%2F", "%252F");
        r.uri = reescaped.parse().unwrap();
        let err = check(&v, &r, v.secret_key.as_bytes(), at(&v.timestamp)).unwrap_err();
        let AuthError::SignatureMismatch { string_to_sign } = &err else {
            panic!("{err:?}");
        };
        assert!(string_to_sign.contains("%252F"), "{string_to_sign}");
    }

    #[test]
    fn timestamp_window_is_inclusive_either_side() {
        let v = &vectors()[0];
        let r = receive(v);
        let t = at(&v.timestamp);
        let w = Duration::from_secs(15 * 60);
        let s = v.secret_key.as_bytes();
        assert_eq!(check(v, &r, s, t + w), Ok(()));
        assert_eq!(check(v, &r, s, t - w), Ok(()));
        let late = check(v, &r, s, t + w + Duration::from_millis(1)).unwrap_err();
        assert!(matches!(late, AuthError::StaleTimestamp { .. }));
        assert!(late.detail().contains("behind"), "{}", late.detail());
        let early = check(v, &r, s, t - w - Duration::from_millis(1)).unwrap_err();
        assert!(early.detail().contains("ahead of"), "{}", early.detail());
        assert!(early.detail().contains("15m"), "{}", early.detail());
    }

    #[test]
    fn headers_access_key_and_account() {
        let v = vectors()
            .into_iter()
            .find(|v| !v.account_id.is_empty())
            .unwrap();
        let now = at(&v.timestamp);
        let s = v.secret_key.clone();
        let s = s.as_bytes();
        for (name, display) in [
            (SCP_ACCESSKEY, "Scp-Accesskey"),
            (SCP_TIMESTAMP, "Scp-Timestamp"),
            (SCP_SIGNATURE, "Scp-Signature"),
            (SCP_CLIENTTYPE, "Scp-ClientType"),
        ] {
            let mut r = receive(&v);
            r.headers.remove(&name);
            assert_eq!(
                check(&v, &r, s, now),
                Err(AuthError::MissingHeaders(vec![display]))
            );
            let mut r = receive(&v);
            r.headers.append(&name, HeaderValue::from_static("x"));
            assert_eq!(
                check(&v, &r, s, now),
                Err(AuthError::DuplicateHeader(display))
            );
        }
        let mut r = receive(&v);
        r.headers.clear();
        let Err(AuthError::MissingHeaders(all)) = check(&v, &r, s, now) else {
            panic!()
        };
        assert_eq!(all.len(), 4);

        let mut r = receive(&v);
        r.headers
            .insert(SCP_ACCESSKEY, HeaderValue::from_static("someone-else"));
        assert_eq!(
            check(&v, &r, s, now),
            Err(AuthError::UnknownAccessKey {
                sent: "someone-else".into()
            })
        );
        // Absent account id counts as "" and so does not match a configured one.
        let mut r = receive(&v);
        r.headers.remove(SCP_ACCOUNTID);
        assert!(matches!(
            check(&v, &r, s, now),
            Err(AuthError::AccountMismatch { ref sent, .. }) if sent.is_empty()
        ));
        let mut r = receive(&v);
        r.headers
            .insert(SCP_TIMESTAMP, HeaderValue::from_static("17641900001x"));
        assert!(matches!(
            check(&v, &r, s, now),
            Err(AuthError::InvalidTimestamp { .. })
        ));
        let mut r = receive(&v);
        r.headers.remove(header::HOST);
        assert_eq!(check(&v, &r, s, now), Err(AuthError::MissingHost));
        // HTTP/2: the authority comes with the URI.
        let mut r = receive(&v);
        let host = r.headers.remove(header::HOST).unwrap();
        let pq = r.uri.path_and_query().unwrap().as_str().to_owned();
        r.uri = format!("{}://{}{pq}", r.scheme, host.to_str().unwrap())
            .parse()
            .unwrap();
        assert_eq!(check(&v, &r, s, now), Ok(()));
    }

    #[test]
    fn every_auth_error_is_a_401_with_a_code() {
        let e = AuthError::MissingHeaders(vec!["Scp-Signature"]).to_error();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(e.detail.contains("Scp-Signature"));
    }
}
