//! A small strict JSON scanner (RFC 8259) for request bodies the proxy inspects.
//!
//! Unlike a parser into a map it refuses duplicate keys (compared after decoding escapes, at
//! every depth, so `{"url":..,"u\u0072l":..}` is caught) and hands back each top-level string
//! value *raw*: the exact bytes between its quotes, escapes not decoded. Input is bounded by
//! the caller; nesting is bounded here ([`MAX_DEPTH`]), so there is no unbounded recursion.

use std::collections::HashSet;

/// Deepest nesting of arrays and objects accepted (serde_json's default limit too).
pub(crate) const MAX_DEPTH: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JsonError {
    #[error("{what} at byte {at}")]
    Invalid { at: usize, what: &'static str },
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the body is valid JSON but not an object")]
    NotObject,
    #[error("key {key:?} appears more than once")]
    DuplicateKey { key: String },
}

/// A top-level member's value, as much as the policies need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// The raw text between the quotes.
    String(&'a str),
    Other(&'static str),
}

/// The members of a top-level object: decoded key, value.
pub(crate) type Members<'a> = Vec<(String, Value<'a>)>;

/// Scans `body` as one JSON object with no duplicate keys at any depth.
pub(crate) fn scan_object(body: &[u8]) -> Result<Members<'_>, JsonError> {
    let text = std::str::from_utf8(body).map_err(|e| JsonError::Invalid {
        at: e.valid_up_to(),
        what: "invalid UTF-8",
    })?;
    let mut sc = Scanner {
        s: text,
        b: text.as_bytes(),
        pos: 0,
    };
    let mut members = Vec::new();
    sc.ws();
    let top = sc.value(0, Some(&mut members))?;
    sc.ws();
    if sc.pos != sc.b.len() {
        return Err(sc.err("unexpected characters after the JSON value"));
    }
    if top != Value::Other("an object") {
        return Err(JsonError::NotObject);
    }
    Ok(members)
}

/// Looks a member up by its decoded key.
pub(crate) fn get<'m, 'a>(members: &'m Members<'a>, key: &str) -> Option<&'m Value<'a>> {
    members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError::Invalid { at: self.pos, what }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// One value; `members` collects an object's members (top level only).
    fn value(
        &mut self,
        depth: usize,
        members: Option<&mut Members<'a>>,
    ) -> Result<Value<'a>, JsonError> {
        match self.peek() {
            Some(b'{') => {
                self.object(depth + 1, members)?;
                Ok(Value::Other("an object"))
            }
            Some(b'[') => {
                self.array(depth + 1)?;
                Ok(Value::Other("an array"))
            }
            Some(b'"') => Ok(Value::String(self.string()?.0)),
            Some(b't') => self.literal("true", "a boolean"),
            Some(b'f') => self.literal("false", "a boolean"),
            Some(b'n') => self.literal("null", "null"),
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Ok(Value::Other("a number"))
            }
            Some(_) => Err(self.err("expected a JSON value")),
            None => Err(self.err("unexpected end of the body")),
        }
    }

    fn literal(&mut self, word: &'static str, kind: &'static str) -> Result<Value<'a>, JsonError> {
        if self.b[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(Value::Other(kind))
        } else {
            Err(self.err("expected a JSON value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let h = self
            .b
            .get(self.pos..self.pos + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("invalid \\u escape"))?;
        self.pos += 4;
        Ok(h)
    }

    /// A string at `pos` (on its opening quote): the raw text between the quotes, and the
    /// decoded text.
    fn string(&mut self) -> Result<(&'a str, String), JsonError> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        let mut decoded = String::new();
        let mut plain_from = start;
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => {
                    decoded.push_str(&self.s[plain_from..self.pos]);
                    let raw = &self.s[start..self.pos];
                    self.pos += 1;
                    return Ok((raw, decoded));
                }
                b'\\' => {
                    decoded.push_str(&self.s[plain_from..self.pos]);
                    self.pos += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.pos += 1;
                    match e {
                        b'"' => decoded.push('"'),
                        b'\\' => decoded.push('\\'),
                        b'/' => decoded.push('/'),
                        b'b' => decoded.push('\u{8}'),
                        b'f' => decoded.push('\u{c}'),
                        b'n' => decoded.push('\n'),
                        b'r' => decoded.push('\r'),
                        b't' => decoded.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let ch = match hi {
                                0xD800..=0xDBFF => {
                                    if !self.b[self.pos..].starts_with(b"\\u") {
                                        return Err(self.err("lone surrogate in \\u escape"));
                                    }
                                    self.pos += 2;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&lo) {
                                        return Err(self.err("lone surrogate in \\u escape"));
                                    }
                                    let cp = 0x10000
                                        + ((u32::from(hi) - 0xD800) << 10)
                                        + (u32::from(lo) - 0xDC00);
                                    char::from_u32(cp)
                                }
                                0xDC00..=0xDFFF => None,
                                _ => char::from_u32(u32::from(hi)),
                            };
                            let ch = ch.ok_or_else(|| self.err("lone surrogate in \\u escape"))?;
                            decoded.push(ch);
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                    plain_from = self.pos;
                }
                0x00..=0x1f => return Err(self.err("control character in a string")),
                _ => self.pos += 1,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.expect(b'[', "expected '['")?;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth, None)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(
        &mut self,
        depth: usize,
        mut members: Option<&mut Members<'a>>,
    ) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.expect(b'{', "expected '{'")?;
        let mut seen = HashSet::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let (_, key) = self.string()?;
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            let v = self.value(depth, None)?;
            if !seen.insert(key.clone()) {
                return Err(JsonError::DuplicateKey { key });
            }
            if let Some(m) = members.as_deref_mut() {
                m.push((key, v));
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(body: &str) -> &'static str {
        match scan_object(body.as_bytes()) {
            Ok(_) => "ok",
            Err(JsonError::Invalid { .. }) => "invalid",
            Err(JsonError::TooDeep) => "deep",
            Err(JsonError::NotObject) => "not_object",
            Err(JsonError::DuplicateKey { .. }) => "duplicate",
        }
    }

    #[test]
    fn table() {
        for (body, want) in [
            (r#"{"url":"x"}"#, "ok"),
            (
                " \t\r\n{ \"url\" : \"x\" , \"a\" : [1, -2.5e+3, true, false, null, {}] }\n",
                "ok",
            ),
            (r#"{}"#, "ok"),
            (r#"{"a":{"b":1,"c":{"b":2}}}"#, "ok"),
            (r#"{"url":"a","url":"b"}"#, "duplicate"),
            (r#"{"url":"a","u\u0072l":"b"}"#, "duplicate"),
            (r#"{"a":{"b":1,"b":2}}"#, "duplicate"),
            (r#"{"a":[{"b":1,"b":2}]}"#, "duplicate"),
            (r#"[{"url":"x"}]"#, "not_object"),
            (r#""x""#, "not_object"),
            ("1", "not_object"),
            ("", "invalid"),
            ("{", "invalid"),
            (r#"{"url":"x"}x"#, "invalid"),
            (r#"{"url":"x"}{}"#, "invalid"),
            (r#"{"url":"x",}"#, "invalid"),
            (r#"{url:"x"}"#, "invalid"),
            (r#"{'url':'x'}"#, "invalid"),
            ("{\"url\":\"a\u{1}b\"}", "invalid"),
            (r#"{"url":"\x"}"#, "invalid"),
            (r#"{"url":"\ud800"}"#, "invalid"),
            (r#"{"url":"\udc00"}"#, "invalid"),
            (r#"{"url":"\ud83d\ude00"}"#, "ok"),
            (r#"{"a":01}"#, "invalid"),
            (r#"{"a":1.}"#, "invalid"),
            (r#"{"a":-}"#, "invalid"),
            (r#"{"a":1e}"#, "invalid"),
            (r#"{"a":tru}"#, "invalid"),
            (r#"{"a":NaN}"#, "invalid"),
            ("\u{feff}{}", "invalid"),
            (r#"{"a":[1,]}"#, "invalid"),
            (r#"{"a" "b"}"#, "invalid"),
        ] {
            assert_eq!(kind(body), want, "{body}");
        }
        assert_eq!(
            scan_object(b"{\"a\":\"\xff\"}"),
            Err(JsonError::Invalid {
                at: 6,
                what: "invalid UTF-8"
            })
        );
    }

    #[test]
    fn raw_strings_are_not_decoded() {
        let m = scan_object(br#"{"n":1,"url":"https:\/\/x\u0041","k\"":"\"q\""}"#).unwrap();
        assert_eq!(get(&m, "url"), Some(&Value::String(r"https:\/\/x\u0041")));
        assert_eq!(get(&m, "n"), Some(&Value::Other("a number")));
        assert_eq!(get(&m, "k\""), Some(&Value::String(r#"\"q\""#)));
        assert_eq!(get(&m, "missing"), None);
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert_eq!(kind(&format!("{{\"a\":{ok}}}")), "ok");
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(kind(&format!("{{\"a\":{deep}}}")), "deep");
        // far deeper than any stack could take recursively
        let huge = "[".repeat(60_000);
        assert_eq!(kind(&format!("{{\"a\":{huge}")), "deep");
    }

    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"{".to_vec()),
            Just(b"}".to_vec()),
            Just(b"[".to_vec()),
            Just(b"]".to_vec()),
            Just(b",".to_vec()),
            Just(b":".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\"url\"".to_vec()),
            Just(b"\"a\"".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\\u00".to_vec()),
            Just(b"\\ud83d".to_vec()),
            Just(b"\\ude00".to_vec()),
            Just(b"true".to_vec()),
            Just(b"null".to_vec()),
            Just(b" ".to_vec()),
            Just(b"-".to_vec()),
            Just(b".".to_vec()),
            Just(b"e".to_vec()),
            Just(b"0".to_vec()),
            Just(b"12".to_vec()),
            proptest::collection::vec(any::<u8>(), 1..3),
        ];
        proptest::collection::vec(token, 0..24).prop_map(|v| v.concat())
    }

    fn arbitrary_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            (-1e6f64..1e6).prop_map(|n| serde_json::json!(n)),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
            any::<String>().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("\\PC{0,4}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Never panics, and agrees with serde_json on what is JSON at all.
        #[test]
        fn agrees_with_serde_json(body in jsonish()) {
            let theirs = serde_json::from_slice::<serde_json::Value>(&body);
            if let Err(e) = &theirs {
                // serde_json refuses numbers that overflow f64; the grammar allows them.
                prop_assume!(!e.to_string().contains("out of range"));
            }
            match scan_object(&body) {
                Ok(_) => prop_assert!(matches!(theirs, Ok(serde_json::Value::Object(_)))),
                Err(JsonError::NotObject) => prop_assert!(matches!(theirs, Ok(ref v) if !v.is_object())),
                Err(JsonError::DuplicateKey { .. }) => prop_assert!(theirs.is_ok()),
                Err(JsonError::Invalid { .. }) | Err(JsonError::TooDeep) => prop_assert!(theirs.is_err(), "{:?}", String::from_utf8_lossy(&body)),
            }
        }

        /// Serialised objects scan clean, and each top-level string comes back raw, exactly as
        /// serialised between its quotes.
        #[test]
        fn serialised_objects_round_trip(v in arbitrary_value(), pretty in any::<bool>()) {
            let obj = match v {
                serde_json::Value::Object(m) => m,
                other => {
                    let mut m = serde_json::Map::new();
                    m.insert("url".into(), other);
                    m
                }
            };
            let text = if pretty {
                serde_json::to_string_pretty(&obj).unwrap()
            } else {
                serde_json::to_string(&obj).unwrap()
            };
            let members = scan_object(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            prop_assert_eq!(members.len(), obj.len());
            for (k, v) in &obj {
                let got = get(&members, k);
                prop_assert!(got.is_some());
                if let (Some(Value::String(raw)), serde_json::Value::String(_)) = (got, v) {
                    let quoted = serde_json::to_string(v).unwrap();
                    prop_assert_eq!(*raw, &quoted[1..quoted.len() - 1]);
                }
            }
        }

        #[test]
        fn never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = scan_object(&body);
        }
    }
}
