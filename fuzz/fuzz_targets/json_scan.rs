//! The request-body JSON scanner (src/policy/json.rs) against serde_json as the oracle.
//!
//! Asserts: no panic on any bytes; the scanner accepts exactly the bodies serde_json reads as
//! one object with no duplicate key at any depth (nesting within both limits); an accepted
//! body's top-level keys are serde_json's, in order, each string value's raw text decodes (as
//! a JSON string) to serde_json's value, and every other value is not a string.
#![no_main]

use std::collections::HashSet;
use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

// The pure core as the proxy compiles it: it imports nothing from the crate.
#[allow(dead_code)]
#[path = "../../src/policy/json.rs"]
mod json;

/// Any JSON value, refusing a duplicate key in any object; the top level's members kept.
enum Strict {
    Object(Vec<(String, serde_json::Value)>),
    Other,
}

struct StrictVisitor {
    top: bool,
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict::Other)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element_seed(Seed { top: false })?.is_some() {}
        Ok(Strict::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut seen = HashSet::new();
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom("duplicate key"));
            }
            if self.top {
                members.push((key, map.next_value::<serde_json::Value>()?));
            } else {
                map.next_value_seed(Seed { top: false })?;
            }
        }
        Ok(if self.top {
            Strict::Object(members)
        } else {
            Strict::Other
        })
    }
}

struct Seed {
    top: bool,
}

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Strict;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor { top: self.top })
    }
}

/// Deepest nesting of `[`/`{` outside strings.
fn depth(data: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in data {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fuzz_target!(|data: &[u8]| {
    let ours = json::scan_object(data);
    // A strict top-level read by serde_json; a duplicate key at the top level would show in
    // `Value` only as one member, so the visitor checks them, the members read as `Value`s
    // (whose own duplicates the nested visitor already refused on the first pass).
    let mut de = serde_json::Deserializer::from_slice(data);
    let strict =
        de::DeserializeSeed::deserialize(Seed { top: false }, &mut de).and_then(|_| de.end());
    let theirs = strict.and_then(|_| {
        let mut de = serde_json::Deserializer::from_slice(data);
        let v = de::DeserializeSeed::deserialize(Seed { top: true }, &mut de)?;
        de.end().map(|_| v)
    });
    // serde_json stops at 127 levels, the scanner at 128: compare only below both limits.
    if depth(data) >= 127 {
        if ours.is_ok() {
            assert!(
                depth(data) <= json::MAX_DEPTH,
                "accepted {} levels",
                depth(data)
            );
        }
        return;
    }
    // serde_json refuses numbers beyond f64 (`1e400`); RFC 8259 and the scanner do not.
    if matches!(&theirs, Err(e) if e.to_string().contains("number out of range")) {
        return;
    }
    match (&ours, &theirs) {
        (Ok(members), Ok(Strict::Object(want))) => {
            assert_eq!(members.len(), want.len());
            for ((k, v), (wk, wv)) in members.iter().zip(want) {
                assert_eq!(k, wk);
                match v {
                    json::Value::String(raw) => {
                        let decoded: String = serde_json::from_str(&format!("\"{raw}\""))
                            .expect("raw string text is a valid JSON string");
                        assert_eq!(Some(decoded.as_str()), wv.as_str(), "{raw:?}");
                    }
                    json::Value::Other(_) => assert!(!wv.is_string(), "{k}: {wv:?}"),
                }
            }
        }
        (Err(json::JsonError::NotObject), Ok(Strict::Other)) => {}
        (Err(_), Err(_)) => {}
        (ours, theirs) => panic!(
            "scanner and serde_json disagree on {:?}: scanner {:?}, serde_json {}",
            String::from_utf8_lossy(data),
            ours,
            match theirs {
                Ok(Strict::Object(_)) => "an object".to_owned(),
                Ok(Strict::Other) => "not an object".to_owned(),
                Err(e) => format!("error {e}"),
            }
        ),
    }
});
