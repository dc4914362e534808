//! The SCP request signature, as a pure function: no clock, no I/O.
//!
//! `Scp-Signature = base64(HMAC-SHA256(secret, METHOD + URL + TIMESTAMP + ACCESS_KEY +
//! ACCOUNT_ID + CLIENT_TYPE))`, where `URL` is the exact URL that goes on the wire (scheme,
//! authority, raw path and, when the target had a `?`, the raw query). Nothing is decoded or
//! re-encoded here: the caller hands over the bytes it forwards.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The parts of a request that are signed. `url` may be given in pieces (`url_parts`) so the
/// hot path never concatenates the base URL and the path into a new string.
#[derive(Clone, Copy, Debug)]
pub struct SignInput<'a> {
    pub method: &'a str,
    pub url_parts: &'a [&'a str],
    pub timestamp: &'a str,
    pub access_key: &'a str,
    pub account_id: &'a str,
    pub client_type: &'a str,
}

impl SignInput<'_> {
    /// The exact string that is signed; the emulator shows it when a signature does not match.
    pub fn string_to_sign(&self) -> String {
        let mut s = String::with_capacity(256);
        s.push_str(self.method);
        for p in self.url_parts {
            s.push_str(p);
        }
        s.push_str(self.timestamp);
        s.push_str(self.access_key);
        s.push_str(self.account_id);
        s.push_str(self.client_type);
        s
    }
}

/// A secret key turned into a ready HMAC state. Keying HMAC hashes the key once; cloning the
/// keyed state per request skips that. Holds no copy of the secret itself and has no `Debug`
/// output beyond a placeholder.
#[derive(Clone)]
pub struct SigningKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        Self { mac }
    }

    /// The raw 32-byte MAC.
    pub fn mac(&self, input: &SignInput<'_>) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(input.method.as_bytes());
        for p in input.url_parts {
            mac.update(p.as_bytes());
        }
        mac.update(input.timestamp.as_bytes());
        mac.update(input.access_key.as_bytes());
        mac.update(input.account_id.as_bytes());
        mac.update(input.client_type.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The `Scp-Signature` value: standard, padded base64 of the MAC (always 44 bytes).
    pub fn sign(&self, input: &SignInput<'_>) -> Signature {
        let mut out = [0u8; 44];
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(self.mac(input), &mut out)
            .unwrap_or_else(|_| unreachable!("32 bytes always encode to 44"));
        debug_assert_eq!(n, 44);
        Signature(out)
    }

    /// Constant-time check of a received signature (used by the emulator).
    pub fn verify(&self, input: &SignInput<'_>, received_b64: &str) -> bool {
        let Ok(received) = base64::engine::general_purpose::STANDARD.decode(received_b64) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(input.string_to_sign().as_bytes());
        mac.verify_slice(&received).is_ok()
    }
}

/// A base64 signature held on the stack.
#[derive(Clone, Copy)]
pub struct Signature([u8; 44]);

impl Signature {
    pub fn as_str(&self) -> &str {
        // base64 output is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

/// Convenience for one-off signing (CLI `sign`, tests): the whole URL in one piece.
pub fn sign(
    secret: &[u8],
    method: &str,
    url: &str,
    timestamp: &str,
    access_key: &str,
    account_id: &str,
    client_type: &str,
) -> String {
    let secret = Zeroizing::new(secret.to_vec());
    SigningKey::new(&secret)
        .sign(&SignInput {
            method,
            url_parts: &[url],
            timestamp,
            access_key,
            account_id,
            client_type,
        })
        .as_str()
        .to_owned()
}

/// Milliseconds since the Unix epoch, the `Scp-Timestamp` format.
pub fn timestamp_ms(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The independently computed vectors in `tests/fixtures/scp-signature-vectors.json`, for the
/// signer's and the emulator verifier's tests.
#[cfg(test)]
pub(crate) mod vectors {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    pub(crate) struct Vector {
        pub name: String,
        pub method: String,
        pub url: String,
        pub timestamp: String,
        pub access_key: String,
        pub account_id: String,
        pub client_type: String,
        pub secret_key: String,
        pub string_to_sign: String,
        pub signature: String,
    }

    pub(crate) fn all() -> Vec<Vector> {
        let text = include_str!("../tests/fixtures/scp-signature-vectors.json");
        let v: Vectors = serde_json::from_str(text).expect("fixture parses");
        assert!(v.vectors.len() >= 8, "fixture lost vectors");
        v.vectors
    }
}

#[cfg(test)]
mod tests {
    use super::vectors::all as vectors;
    use super::*;

    #[test]
    fn reproduces_every_independent_vector() {
        for v in vectors() {
            let input = SignInput {
                method: &v.method,
                url_parts: &[&v.url],
                timestamp: &v.timestamp,
                access_key: &v.access_key,
                account_id: &v.account_id,
                client_type: &v.client_type,
            };
            assert_eq!(input.string_to_sign(), v.string_to_sign, "{}", v.name);
            let key = SigningKey::new(v.secret_key.as_bytes());
            assert_eq!(key.sign(&input).as_str(), v.signature, "{}", v.name);
            assert!(key.verify(&input, &v.signature), "{}", v.name);
            assert_eq!(
                sign(
                    v.secret_key.as_bytes(),
                    &v.method,
                    &v.url,
                    &v.timestamp,
                    &v.access_key,
                    &v.account_id,
                    &v.client_type
                ),
                v.signature
            );
        }
    }

    #[test]
    fn split_url_signs_the_same_as_whole_url() {
        for v in vectors() {
            let split = v.url.find("://").map(|i| i + 3).unwrap();
            let cut = split + v.url[split..].find('/').unwrap_or(v.url.len() - split);
            let (a, b) = v.url.split_at(cut);
            let input = SignInput {
                method: &v.method,
                url_parts: &[a, b],
                timestamp: &v.timestamp,
                access_key: &v.access_key,
                account_id: &v.account_id,
                client_type: &v.client_type,
            };
            let key = SigningKey::new(v.secret_key.as_bytes());
            assert_eq!(key.sign(&input).as_str(), v.signature, "{}", v.name);
        }
    }

    #[test]
    fn one_changed_byte_changes_the_signature() {
        let v = &vectors()[4];
        let reescaped = v.url.replace("%2F", "%252F");
        assert_ne!(reescaped, v.url);
        let input = SignInput {
            method: &v.method,
            url_parts: &[&reescaped],
            timestamp: &v.timestamp,
            access_key: &v.access_key,
            account_id: &v.account_id,
            client_type: &v.client_type,
        };
        let key = SigningKey::new(v.secret_key.as_bytes());
        assert_ne!(key.sign(&input).as_str(), v.signature);
        assert!(!key.verify(&input, &v.signature));
        assert!(!key.verify(&input, "not base64!"));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::new(b"sentinel-secret");
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }

    #[test]
    fn timestamp_is_thirteen_digit_millis() {
        let ts = timestamp_ms(std::time::SystemTime::now()).to_string();
        assert_eq!(ts.len(), 13);
    }
}
